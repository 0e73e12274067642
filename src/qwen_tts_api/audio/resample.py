"""Output sample rates: the model's 24 kHz audio resampled by FFmpeg's resampler (PyAV's
``AudioResampler``, libswresample), whole or chunk by chunk.

The resampler keeps its filter history between chunks, so a stream resampled as it is made
gives exactly the samples of the whole waveform resampled at once (``tests/api/test_sample_rates.py``).
At 24 kHz nothing is touched.
"""

from __future__ import annotations

import av
import numpy as np

from ..constants import SAMPLE_RATE

# What `sample_rate` may ask for: telephony, wideband, the model's own, CD and studio rates.
SAMPLE_RATES = (8000, 16000, 22050, SAMPLE_RATE, 44100, 48000)


class StreamResampler:
    def __init__(self, rate: int):
        self.rate = rate
        self._resampler = None if rate == SAMPLE_RATE else av.AudioResampler(format="flt", layout="mono", rate=rate)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """The resampled audio of the next 24 kHz chunk (the filter may hold a few samples back)."""
        if self._resampler is None or not samples.size:
            return samples
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        return _samples(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """What the filter still holds, at the end of the stream."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return _samples(self._resampler.resample(None))


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """A whole waveform at ``rate``."""
    resampler = StreamResampler(rate)
    if resampler.rate == SAMPLE_RATE:
        return samples
    return np.concatenate([resampler.process(samples), resampler.flush()])


def _samples(frames: list[av.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, np.float32)
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]).astype(np.float32, copy=False)
