"""Optional API keys: ``Authorization: Bearer <key>`` on every ``/v1`` route, WebSockets
included (checked before the upgrade: no key, no socket).

Off when QWEN_TTS_API_KEYS is empty (local use). Keys are compared in constant time, and
every configured key is compared, so timing tells nothing about which key came close.
``/health``, ``/ready``, ``/metrics`` and the playground page stay open. ``Api-Key <key>``
is accepted as well as ``Bearer <key>``: LiveKit's Baseten plugin sends that scheme; so is an
``xi-api-key: <key>`` header, which ElevenLabs' clients send (the with-timestamps routes).

The key also says whose saved voices the caller sees: the middleware puts the caller's
``Viewer`` in the request's state (``scope["state"]["viewer"]``), with the key's digest as
the owner of the voices it saves; admin keys (QWEN_TTS_ADMIN_API_KEYS) see every voice.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from ..settings import Settings
from ..voices.store import Viewer
from .errors import APIError, error_response, refuse_websocket
from .state import VIEWER_STATE

# The owner recorded on a voice: a slow, salted digest of the key, so a voice file never
# holds the key and a weak key is costly to guess back from it.
_OWNER_SALT = b"qwen-tts-api voice owner"
_OWNER_ROUNDS = 100_000


def owner_of(key: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", key.encode(), _OWNER_SALT, _OWNER_ROUNDS)[:16].hex()


PROTECTED_PREFIX = "/v1"


SCHEMES = ("bearer", "api-key")


ELEVENLABS_KEY_HEADER = b"xi-api-key"


def _bearer(scope: Scope) -> str | None:
    elevenlabs = None
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() in SCHEMES and token.strip() else None
        if name == ELEVENLABS_KEY_HEADER:
            elevenlabs = value.decode("latin-1").strip() or None
    return elevenlabs


class KeyRing:
    """The configured keys, each with the Viewer its caller gets."""

    def __init__(self, settings: Settings):
        viewers = {key: Viewer(owner_of(key), False, settings.share_unowned_voices) for key in settings.api_keys}
        viewers |= {key: Viewer(owner_of(key), True, True) for key in settings.admin_api_keys}
        self._keys = [(key.encode(), viewer) for key, viewer in viewers.items()]

    def viewer(self, token: str) -> Viewer | None:
        """The Viewer of the key sent, or None; every key is compared, in constant time."""
        sent = token.encode()
        found = None
        for key, viewer in self._keys:
            if hmac.compare_digest(sent, key):
                found = viewer
        return found


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyRing):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not (
            path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
        ):
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        viewer = None if token is None else self.keys.viewer(token)
        if token is None:
            err = _unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'", "missing_api_key")
        elif viewer is None:
            err = _unauthorized("Incorrect API key provided", "invalid_api_key")
        else:
            scope.setdefault("state", {})[VIEWER_STATE] = viewer
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await refuse_websocket(err, scope, receive, send, close_code=1008)  # policy violation
            return
        await error_response(err)(scope, receive, send)


def _unauthorized(message: str, code: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code=code, headers={"WWW-Authenticate": "Bearer"})
