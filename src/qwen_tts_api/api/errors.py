"""OpenAI's error envelope for every failure: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..engine.errors import EngineBusy, EngineUnavailable, GenerationError, SynthesisTimeout
from ..settings import Settings
from ..text.echo import loggable
from .protocol import ErrorDetail, ErrorResponse
from .state import server_state

log = logging.getLogger(__name__)

ROUTE_LIMIT = 200  # characters of a requested path repeated in a 404 or 405

_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def timeout_error(settings: Settings) -> APIError:
    """A request the engine did not finish within its deadline (SynthesisTimeout)."""
    return engine_error(SynthesisTimeout(), settings.request_timeout_seconds)


EngineFailure = EngineBusy | SynthesisTimeout | EngineUnavailable | GenerationError


def engine_error(exc: EngineFailure, timeout_seconds: float) -> APIError:
    """Each failure the engine reports, as the client is told it: one table for HTTP
    responses and WebSocket ``error`` events."""
    if isinstance(exc, EngineBusy):
        return APIError(
            429,
            f"The server is busy with other requests; retry after {exc.retry_after} s",
            code="server_busy",
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, SynthesisTimeout):
        message = f"Speech was not ready within {timeout_seconds:g} s (QWEN_TTS_REQUEST_TIMEOUT)"
        return APIError(504, message, type="server_error", code="timeout")
    if isinstance(exc, EngineUnavailable):
        message = f"The speech engine has stopped and this server must be restarted: {exc}"
        return APIError(503, message, type="server_error", code="engine_unavailable")
    return APIError(500, str(exc), type="server_error", code="generation_failed")


class ClientStalled(Exception):
    """The client read nothing for QWEN_TTS_SEND_TIMEOUT seconds: its response is abandoned
    (api/limits.py). Not an OSError, which Starlette would take for a disconnect."""


class SafeJSONResponse(JSONResponse):
    """JSON that any string fits: UTF-8 as FastAPI sends it, or, where a string cannot be
    UTF-8 (a lone surrogate a client sent as a field name), ASCII with ``\\u`` escapes."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(err: APIError) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=err.message, type=err.type, param=err.param, code=err.code))
    return SafeJSONResponse(body.model_dump(), status_code=err.status, headers=err.headers)


async def refuse_websocket(err: APIError, scope: Scope, receive: Receive, send: Send, close_code: int) -> None:
    """Answer a WebSocket upgrade with ``err`` as an HTTP response where the server can (the
    ASGI denial-response extension: uvicorn has it), else close before accepting with
    ``close_code`` (the client sees a 403)."""
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await error_response(err)(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": close_code, "reason": err.message[:120]})


def _validation_to_error(exc: RequestValidationError) -> APIError:
    problems: list[dict[str, Any]] = list(exc.errors())
    if not problems:
        return invalid_request("Invalid request")
    first = problems[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return invalid_request("Request body is not valid JSON", code="invalid_json")
    if not loc:
        if kind == "missing":
            return invalid_request("Request body is required (JSON object)")
        return invalid_request(f"Request body is invalid: {first.get('msg', 'invalid value')}")
    # Union members add their type name to the location (voice.str, voice.VoiceRef): drop it.
    param = loc[0]
    msg = str(first.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    code = "missing_required_parameter" if kind == "missing" else "invalid_value"
    return invalid_request(f"Invalid '{param}': {msg}", param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_to_error(exc))

    @app.exception_handler(EngineBusy)
    @app.exception_handler(SynthesisTimeout)
    @app.exception_handler(EngineUnavailable)
    @app.exception_handler(GenerationError)
    async def _engine(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EngineFailure)
        return error_response(engine_error(exc, server_state(request).settings.request_timeout_seconds))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = loggable(request.url.path, ROUTE_LIMIT)  # the client's own: one line, clipped
        if exc.status_code == 404:
            message = f"Unknown route: {request.method} {path}"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {path}"
        else:
            message = str(exc.detail)
        return error_response(APIError(exc.status_code, message, headers=getattr(exc, "headers", None)))

    app.add_middleware(UnexpectedErrorMiddleware)


class UnexpectedErrorMiddleware:
    """Answers an unhandled exception with a 500 envelope and does not re-raise it.

    Starlette's own catch-all re-raises after responding, which makes uvicorn drop the
    keep-alive connection: a pooling client (the openai SDK) then fails its next request.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientStalled:
            raise  # not an error of ours: api/limits.py ends the response
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), loggable(scope.get("path")))
            if response_started:
                raise  # too late for an error body; the server closes the connection
            err = APIError(500, "The server had an error while processing the request", type="server_error")
            await error_response(err)(scope, receive, send)
