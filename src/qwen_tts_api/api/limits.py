"""What one client may hold of the server, refused early and said plainly.

- **Bodies.** A JSON (or plain form) body is at most QWEN_TTS_MAX_BODY_BYTES: one whose
  ``Content-Length`` says more gets a ``413`` before any of it is read, and one without (a
  chunked body) is counted as it arrives and refused once past the limit. Such a body is read
  here, whole, before the route sees it: FastAPI would read it whole anyway. A multipart voice
  upload (``UPLOAD_PATHS``) has the larger limit of its file, QWEN_TTS_AUDIO_SAMPLE_MAX_BYTES
  plus room for the form, and is counted while the route streams it to disk.
- **Slow readers.** Every write to a client (a chunk of audio, a WebSocket message) must be
  taken within QWEN_TTS_SEND_TIMEOUT seconds. A client that stops reading has its response
  abandoned and its connection closed, and its stream's generation stops, freeing its place
  in the batch; otherwise it would keep its row until the text was spoken and its audio in
  memory for as long as it held the socket.
- **Sockets.** At most QWEN_TTS_WS_MAX_SESSIONS WebSocket sessions are open at once; past
  it the handshake is answered ``429`` with ``Retry-After``. (Each session's messages are
  bounded in api/live.py; idle sessions are closed there too.)
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..settings import Settings
from ..text.echo import loggable
from .errors import APIError, ClientStalled, error_response, refuse_websocket

log = logging.getLogger(__name__)

UPLOAD_PATHS = frozenset({"/v1/audio/voices"})  # routes that take a multipart file upload
FORM_OVERHEAD = 64 * 1024  # room for an upload's text fields and multipart framing beside the file

MiB = 1024 * 1024


class BodyTooLarge(APIError):
    """A body past its limit (raised from ``receive`` while an upload streams in)."""

    def __init__(self, message: str, param: str | None = None, code: str = "request_too_large"):
        super().__init__(413, message, param=param, code=code)


def _size(limit: int) -> str:
    return f"{limit / MiB:g} MiB" if limit >= MiB else f"{limit / 1024:g} KiB"


def json_too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"The request body is larger than {_size(limit)} (QWEN_TTS_MAX_BODY_BYTES). Reference audio larger "
        "than that can be sent as a URL, or uploaded once as a saved voice (multipart, POST /v1/audio/voices)"
    )


def upload_too_large(file_limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"audio_sample is larger than the {_size(file_limit)} limit (QWEN_TTS_AUDIO_SAMPLE_MAX_BYTES)",
        param="audio_sample",
        code="file_too_large",
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


@dataclass
class _Exchange:
    """One HTTP request or WebSocket session, as this middleware tracks it."""

    started: bool = False  # the response has begun
    stalled: bool = False  # a write waited past the send timeout


class ClientLimits:
    """ASGI middleware for the limits above (inside the API-key check: a caller without a key
    holds nothing)."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.body_limit = settings.max_body_bytes
        self.file_limit = settings.audio_sample_max_bytes
        self.send_timeout = settings.send_timeout_seconds
        self.max_sessions = settings.ws_max_sessions
        # Sessions free up when their clients go quiet: within the idle timeout.
        self.session_retry_after = math.ceil(settings.ws_idle_timeout_seconds)
        self.sessions = 0  # open WebSocket sessions (the event loop's only)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # --- HTTP ---
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = (_header(scope, b"content-type") or "").lower()
        upload = scope["path"] in UPLOAD_PATHS and content_type.startswith("multipart/form-data")
        limit = self.file_limit + FORM_OVERHEAD if upload else self.body_limit
        too_large = upload_too_large(self.file_limit) if upload else json_too_large(self.body_limit)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await error_response(too_large)(scope, receive, send)  # none of the body is read
            return
        if upload:
            inner_receive = _counting(receive, limit, too_large)
        else:
            try:
                body = await _read_body(receive, limit, too_large)
            except BodyTooLarge:
                await error_response(too_large)(scope, receive, send)
                return
            if body is None:  # the client left while sending it
                return
            inner_receive = _replaying(body, receive)
        exchange = _Exchange()
        timed_send = self._timed(send, exchange)

        async def tracking_send(message: Message) -> None:
            exchange.started = exchange.started or message["type"] == "http.response.start"
            await timed_send(message)

        try:
            await self.app(scope, inner_receive, tracking_send)
        except BodyTooLarge as exc:  # an upload past its limit, raised where no route caught it
            if exchange.started:
                raise
            await error_response(exc)(scope, receive, send)
        except BaseException:
            if not exchange.stalled:
                raise
        finally:
            self._report_stall(scope, exchange)

    def _timed(self, send: Send, exchange: _Exchange) -> Callable[[Message], Awaitable[None]]:
        async def timed_send(message: Message) -> None:
            if exchange.stalled:  # once stalled, every later write (a close too) fails at once
                raise ClientStalled
            try:
                async with asyncio.timeout(self.send_timeout):
                    await send(message)
            except TimeoutError:
                exchange.stalled = True
                raise ClientStalled from None

        return timed_send

    def _report_stall(self, scope: Scope, exchange: _Exchange) -> None:
        if not exchange.stalled:
            return
        log.warning(
            "%s %s: the client read nothing for %g s (QWEN_TTS_SEND_TIMEOUT); its response was abandoned",
            scope.get("method", "WEBSOCKET"),
            loggable(scope.get("path")),
            self.send_timeout,
        )

    # --- WebSocket ---
    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.sessions >= self.max_sessions:
            err = APIError(
                429,
                f"This server has {self.max_sessions} WebSocket sessions open (QWEN_TTS_WS_MAX_SESSIONS); "
                f"retry after {self.session_retry_after} s",
                code="too_many_sessions",
                type="rate_limit_error",
                headers={"Retry-After": str(self.session_retry_after)},
            )
            await refuse_websocket(err, scope, receive, send, close_code=1013)  # try again later
            return
        exchange = _Exchange()
        self.sessions += 1
        try:
            await self.app(scope, receive, self._timed(send, exchange))
        except BaseException:
            if not exchange.stalled:
                raise
        finally:
            self.sessions -= 1
            self._report_stall(scope, exchange)


async def _read_body(receive: Receive, limit: int, too_large: BodyTooLarge) -> list[Message] | None:
    """The body's messages, read whole; ``too_large`` raised once past ``limit`` bytes (the
    rest is left unread), None when the client disconnects first."""
    counted = _counting(receive, limit, too_large)
    messages: list[Message] = []
    while True:
        message = await counted()
        if message["type"] != "http.request":
            return None
        messages.append(message)
        if not message.get("more_body", False):
            return messages


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """The body read before, then the connection's own messages (a disconnect)."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _counting(receive: Receive, limit: int, too_large: BodyTooLarge) -> Receive:
    """``receive`` that raises ``too_large`` once the body passes ``limit`` bytes."""
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise too_large
        return message

    return counted
