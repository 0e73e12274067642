"""Reading what a live session's client sends: one WebSocket message at a time, checked for
size and shape before the session looks at it (``live.py``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..text.echo import quoted

MESSAGE_TOO_BIG = 1009  # the WebSocket close code for a message past the size limit


@dataclass(frozen=True)
class Refusal:
    """Why a message is not read: ``close`` says the session ends with it (else an ``error``
    event answers it and the session goes on)."""

    message: str
    code: str
    param: str | None = None
    close: bool = False


def message_bytes(message: Mapping[str, Any]) -> int:
    text = message.get("text")
    return len(text.encode()) if text is not None else len(message.get("bytes") or b"")


def read_message(message: Mapping[str, Any], limit: int) -> dict | Refusal:
    """A received ``websocket.receive`` message as the JSON object it holds."""
    size = message_bytes(message)
    if size > limit:
        reason = f"a message of {size} bytes is larger than {limit} bytes (QWEN_TTS_WS_MAX_MESSAGE_BYTES)"
        return Refusal(reason, "message_too_large", close=True)
    if message.get("text") is None:
        return Refusal("send JSON text frames; binary frames are not read", "invalid_message")
    try:
        data = json.loads(message["text"])
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return Refusal("a message must be a JSON object", "invalid_json")
    return data


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], message: dict, unknown_code: str = "unknown_parameter") -> M | Refusal:
    """``message`` as ``model``, or the first thing wrong with it (a field ``model`` does not
    know is answered with ``unknown_code``)."""
    try:
        return model.model_validate(message)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        code = unknown_code if first["type"] == "extra_forbidden" else "invalid_value"
        return Refusal(f"Invalid {quoted(param)}: {first['msg']}", code, param)
