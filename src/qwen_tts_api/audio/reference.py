"""Decodes reference audio for voice cloning with our own code (never the package's loader).

Any container/codec PyAV can read is accepted; the result is mono float32 at 24 kHz,
with stereo mixed down. Duration is capped while decoding, so a tiny file that
expands to hours of audio is refused before it uses the memory.
"""

from __future__ import annotations

import io

import av
import numpy as np

from ..constants import SAMPLE_RATE

MIN_SECONDS = 0.5


class AudioSampleError(ValueError):
    """The reference audio is unusable; the message is safe to show the client."""


def decode_reference(data: bytes, max_seconds: float) -> np.ndarray:
    if not data:
        raise AudioSampleError("audio_sample is empty")
    max_samples = int(max_seconds * SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioSampleError("audio_sample contains no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    total += out.samples
                if total > max_samples:
                    raise AudioSampleError(f"audio_sample is longer than the {max_seconds:g} s limit")
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
                total += out.samples
    except AudioSampleError:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise AudioSampleError("audio_sample could not be decoded as audio") from exc
    if total > max_samples:
        raise AudioSampleError(f"audio_sample is longer than the {max_seconds:g} s limit")
    if total < MIN_SECONDS * SAMPLE_RATE:
        raise AudioSampleError(f"audio_sample is shorter than {MIN_SECONDS:g} s of audio")
    waveform = np.concatenate(pieces).astype(np.float32)
    if not np.isfinite(waveform).all():
        raise AudioSampleError("audio_sample could not be decoded as audio")
    return waveform
