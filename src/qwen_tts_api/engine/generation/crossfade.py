"""Joins the audio of consecutive text segments without clicks.

Each segment is generated and decoded on its own, so the waveform jumps where two meet.
A short fade-out ends every segment but the last and a fade-in starts every segment but
the first. The last few milliseconds of the stream are held back until it is known whether
they end a segment. A single-segment request passes through untouched. When the number of
segments is not known (text still arriving), every segment ends with the fade-out.
"""

from __future__ import annotations

import numpy as np

FADE_SAMPLES = 240  # 10 ms at 24 kHz


class CrossFade:
    def __init__(self, segments: int | None, fade: int = FADE_SAMPLES):
        self.segments = segments
        self.fade = fade
        self._held = np.zeros(0, np.float32)
        self._started: set[int] = set()

    def _fade_in(self, index: int, audio: np.ndarray) -> np.ndarray:
        if index == 0 or index in self._started or not audio.size:
            return audio
        self._started.add(index)
        audio = audio.copy()
        n = min(self.fade, audio.size)
        audio[:n] *= np.linspace(0.0, 1.0, n, dtype=np.float32)
        return audio

    def feed(self, index: int, audio: np.ndarray) -> np.ndarray:
        if self.segments == 1:
            return audio
        joined = np.concatenate([self._held, self._fade_in(index, audio)])
        self._held = joined[-self.fade :]
        return joined[: -self.fade]

    def end_segment(self, index: int, tail: np.ndarray | None) -> np.ndarray:
        audio = self.feed(index, tail) if tail is not None else np.zeros(0, np.float32)
        if self.segments == 1:
            return audio
        held, self._held = self._held, np.zeros(0, np.float32)
        if (self.segments is None or index < self.segments - 1) and held.size:
            held = held * np.linspace(1.0, 0.0, held.size, dtype=np.float32)
        return np.concatenate([audio, held])
