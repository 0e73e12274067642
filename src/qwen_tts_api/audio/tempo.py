"""``speed`` as a time stretch (FFmpeg's ``atempo`` through PyAV): duration changes, pitch does not."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from ..constants import SAMPLE_RATE


def atempo_factors(speed: float) -> list[float]:
    """Split a speed into steps of 0.5..2.0, the range where atempo sounds best."""
    factors: list[float] = []
    remaining = speed
    while remaining < 0.5:
        factors.append(0.5)
        remaining /= 0.5
    while remaining > 2.0:
        factors.append(2.0)
        remaining /= 2.0
    factors.append(remaining)
    return factors


class TempoFilter:
    """Stretches audio piece by piece; ``flush`` returns what the filter still holds."""

    def __init__(self, speed: float):
        self._graph = av.filter.Graph()
        source = self._graph.add_abuffer(
            format="flt", sample_rate=SAMPLE_RATE, layout="mono", time_base=Fraction(1, SAMPLE_RATE)
        )
        node = source
        for factor in atempo_factors(speed):
            step = self._graph.add("atempo", f"{factor:.6f}")
            node.link_to(step)
            node = step
        sink = self._graph.add("abuffersink")
        node.link_to(sink)
        self._graph.configure()
        self._pts = 0

    def _pull(self) -> np.ndarray:
        pieces = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            pieces.append(frame.to_ndarray().reshape(-1))
        return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)

    def process(self, samples: np.ndarray) -> np.ndarray:
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if samples.size:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self._pts
            frame.time_base = Fraction(1, SAMPLE_RATE)
            self._pts += samples.size
            self._graph.push(frame)
        return self._pull()

    def flush(self) -> np.ndarray:
        self._graph.push(None)
        return self._pull()


def change_speed(samples: np.ndarray, speed: float) -> np.ndarray:
    if abs(speed - 1.0) < 1e-6:
        return np.asarray(samples, dtype=np.float32)
    tempo = TempoFilter(speed)
    return np.concatenate([tempo.process(samples), tempo.flush()])
