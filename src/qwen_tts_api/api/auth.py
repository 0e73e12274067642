"""Optional API keys: ``Authorization: Bearer <key>`` on every ``/v1`` route, WebSockets
included (checked before the upgrade: no key, no socket).

Off when QWEN_TTS_API_KEYS is empty (local use). Keys are compared in constant time, and
every configured key is compared, so timing tells nothing about which key came close.
``/health``, ``/ready``, ``/metrics`` and the playground page stay open. ``Api-Key <key>``
is accepted as well as ``Bearer <key>``: LiveKit's Baseten plugin sends that scheme.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import APIError, error_response

PROTECTED_PREFIX = "/v1"


def key_matches(sent: str, keys: list[bytes]) -> bool:
    token = sent.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched


SCHEMES = ("bearer", "api-key")


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() in SCHEMES and token.strip() else None
    return None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str]):
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not (
            path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
        ):
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        if token is None:
            err = _unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'", "missing_api_key")
        elif not key_matches(token, self.keys):
            err = _unauthorized("Incorrect API key provided", "invalid_api_key")
        else:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await _refuse_websocket(err, scope, receive, send)
            return
        await error_response(err)(scope, receive, send)


async def _refuse_websocket(err: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer the upgrade with the 401 itself where the server can (the ASGI denial-response
    extension: uvicorn has it), else close before accepting (the client sees a 403)."""
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await error_response(err)(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": err.message[:120]})


def _unauthorized(message: str, code: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code=code, headers={"WWW-Authenticate": "Bearer"})
