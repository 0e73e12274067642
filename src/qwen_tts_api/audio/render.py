"""Speed, then encoding, for one response: the one way audio leaves the server.

A whole body is rendered in one piece (its header then carries the exact length, and mp3
its gapless header); a streamed body chunk by chunk as the engine produces it, with the
tempo filter and encoder keeping their state between chunks.
"""

from __future__ import annotations

import numpy as np

from .encode import AudioEncoder, encode_audio, make_encoder
from .tempo import TempoFilter, change_speed


class Renderer:
    def __init__(self, fmt: str, speed: float):
        self.fmt, self.speed = fmt, speed
        self._encoder: AudioEncoder | None = None
        self._tempo: TempoFilter | None = None

    def whole(self, waveform: np.ndarray) -> bytes:
        """A complete body from the complete waveform."""
        return encode_audio(change_speed(waveform, self.speed), self.fmt)

    def chunk(self, audio: np.ndarray) -> bytes:
        """The next bytes of a streamed body (possibly none yet)."""
        if self._encoder is None:
            self._encoder = make_encoder(self.fmt)
            self._tempo = TempoFilter(self.speed) if abs(self.speed - 1.0) >= 1e-6 else None
        if self._tempo is not None:
            audio = self._tempo.process(audio)
        return self._encoder.encode(audio)

    def finish(self) -> bytes:
        """The end of a streamed body: what the filter and encoder still hold."""
        if self._encoder is None:
            self._encoder = make_encoder(self.fmt)
        tail = self._encoder.encode(self._tempo.flush()) if self._tempo is not None else b""
        return tail + self._encoder.finish()
