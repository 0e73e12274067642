"""Optional API keys: ``Authorization: Bearer <key>`` on every ``/v1`` route.

Off when QWEN_TTS_API_KEYS is empty (local use). Keys are compared in constant time, and
every configured key is compared, so timing tells nothing about which key came close.
``/health``, ``/ready``, ``/metrics`` and the playground page stay open.
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


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str]):
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")):
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
        await error_response(err)(scope, receive, send)


def _unauthorized(message: str, code: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code=code, headers={"WWW-Authenticate": "Bearer"})
