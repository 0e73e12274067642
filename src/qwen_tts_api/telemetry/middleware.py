"""ASGI middleware: a request id on every response, then one log line and the metrics
when the response has ended (for a stream, after its last byte)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ServerMetrics
from .record import RequestRecord

log = logging.getLogger("qwen_tts_api.requests")

REQUEST_ID_HEADER = "x-request-id"
QUIET_PATHS = {"/health", "/ready", "/metrics"}
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")  # echoed only if it is safe to log and return


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            sent = value.decode("latin-1")
            if _CLIENT_ID.match(sent):
                return sent
            break
    return uuid.uuid4().hex


class RequestTelemetry:
    def __init__(self, app: ASGIApp, metrics: ServerMetrics | None = None):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(request_id=_request_id(scope), method=scope["method"], path=scope["path"])
        scope.setdefault("state", {})["record"] = record

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), record.request_id.encode("latin-1")),
                ]
            elif message["type"] == "http.response.body" and message.get("body") and record.first_byte is None:
                record.first_byte = time.monotonic()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            record.ended = time.monotonic()
            route = scope.get("route")
            record.route = getattr(route, "path", None) or record.route
            if record.status == 0:  # the client left before any response
                record.status = 499
            report(record, self.metrics)


def report(record: RequestRecord, metrics: ServerMetrics | None) -> None:
    """One log line and the metrics for a request that has ended (or a WebSocket turn)."""
    # Probes and scrapes come every few seconds: keep them out of the INFO log.
    level = logging.DEBUG if record.path in QUIET_PATHS and record.status < 400 else logging.INFO
    log.log(level, json.dumps(record.fields(), separators=(",", ":")))
    if metrics is not None:
        metrics.observe(record)
