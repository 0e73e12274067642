"""What one request did, filled in as it goes and logged/measured when it ends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from ..constants import FRAME_SECONDS


@dataclass
class RequestRecord:
    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.monotonic)
    route: str = "unmatched"  # the route's template, e.g. /v1/audio/voices/{voice_id}
    status: int = 0
    first_byte: float | None = None
    ended: float | None = None
    # Speech requests only (set by the speech route):
    model: str | None = None
    voice_kind: str | None = None  # builtin | saved | clone
    response_format: str | None = None
    input_chars: int | None = None
    input_text: str | None = None  # kept only when QWEN_TTS_LOG_INPUT is on
    speed: float = 1.0
    stream: Any = None  # the engine's SynthesisStream, for the audio it produced

    @property
    def is_speech(self) -> bool:
        return self.model is not None

    @property
    def audio_seconds(self) -> float:
        if self.stream is None:
            return 0.0
        return self.stream.usage.output_frames * FRAME_SECONDS / self.speed

    @property
    def ttfa(self) -> float | None:
        """Seconds from the request's arrival to its first audio byte."""
        return None if self.first_byte is None or not self.is_speech else self.first_byte - self.started

    def fields(self) -> dict[str, Any]:
        ended = self.ended if self.ended is not None else time.monotonic()
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_s": round(ended - self.started, 4),
        }
        if self.is_speech:
            out.update(
                model=self.model,
                voice_kind=self.voice_kind,
                format=self.response_format,
                input_chars=self.input_chars,
                audio_s=round(self.audio_seconds, 3),
                ttfa_s=None if self.ttfa is None else round(self.ttfa, 4),
            )
            if self.input_text is not None:
                out["input"] = self.input_text
        return out


def record_of(request: Request) -> RequestRecord | None:
    return getattr(request.state, "record", None)
