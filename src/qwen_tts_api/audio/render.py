"""Speed, then the sample rate, then encoding, for one response: the one way audio leaves
the server.

A whole body is rendered in one piece (its header then carries the exact length, and mp3
its gapless header); a streamed body chunk by chunk as the engine produces it, with the
tempo filter, resampler and encoder keeping their state between chunks.
"""

from __future__ import annotations

import numpy as np

from ..constants import SAMPLE_RATE
from .encode import AudioEncoder, encode_audio, make_encoder
from .resample import StreamResampler, resample
from .tempo import TempoFilter, change_speed


class Renderer:
    def __init__(self, fmt: str, speed: float, rate: int = SAMPLE_RATE):
        self.fmt, self.speed, self.rate = fmt, speed, rate
        self._encoder: AudioEncoder | None = None
        self._tempo: TempoFilter | None = None
        self._resampler = StreamResampler(rate)

    def whole(self, waveform: np.ndarray) -> bytes:
        """A complete body from the complete waveform."""
        return encode_audio(resample(change_speed(waveform, self.speed), self.rate), self.fmt, self.rate)

    def chunk(self, audio: np.ndarray) -> bytes:
        """The next bytes of a streamed body (possibly none yet)."""
        if self._encoder is None:
            self._encoder = make_encoder(self.fmt, rate=self.rate)
            self._tempo = TempoFilter(self.speed) if abs(self.speed - 1.0) >= 1e-6 else None
        if self._tempo is not None:
            audio = self._tempo.process(audio)
        return self._encoder.encode(self._resampler.process(audio))

    def finish(self) -> bytes:
        """The end of a streamed body: what the filter, resampler and encoder still hold."""
        if self._encoder is None:
            self._encoder = make_encoder(self.fmt, rate=self.rate)
        tail = self._tempo.flush() if self._tempo is not None else np.zeros(0, np.float32)
        resampled = np.concatenate([self._resampler.process(tail), self._resampler.flush()])
        return self._encoder.encode(resampled) + self._encoder.finish()
