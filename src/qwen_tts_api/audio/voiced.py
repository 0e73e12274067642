"""Where speech starts and ends inside a segment's audio: its louder part, for the estimate
of word timings (speech models leave a little quiet at both ends)."""

from __future__ import annotations

import numpy as np

from ..constants import SAMPLE_RATE

WINDOW = SAMPLE_RATE // 50  # 20 ms
QUIET = 0.05  # of the loudest window's level


def voiced_span(audio: np.ndarray) -> tuple[int, int]:
    """The samples from the first to the last window louder than ``QUIET`` of the loudest
    (the whole audio when it is all quiet or too short to tell)."""
    windows = audio.size // WINDOW
    if windows < 3:
        return 0, audio.size
    levels = np.sqrt(np.mean(np.square(audio[: windows * WINDOW].reshape(windows, WINDOW), dtype=np.float64), axis=1))
    loud = np.flatnonzero(levels > QUIET * levels.max())
    if loud.size == 0:
        return 0, audio.size
    return int(loud[0]) * WINDOW, min(audio.size, (int(loud[-1]) + 1) * WINDOW)
