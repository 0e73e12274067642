"""Reference audio decoding: any format, stereo mixed down, 24 kHz, capped, garbage refused."""

import io

import numpy as np
import pytest
import soundfile as sf
from helpers import SR, encode_with_pyav, tone

from qwen_tts_api.audio.reference import AudioSampleError, decode_reference


def wav_bytes(samples: np.ndarray, sr: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda: wav_bytes(tone(2.0, 220.0, sr=44100, channels=2), 44100),
        lambda: wav_bytes(tone(2.0, 220.0, sr=16000), 16000, subtype="FLOAT"),
        lambda: wav_bytes(tone(2.0, 220.0, sr=48000, channels=2), 48000, subtype="PCM_24", fmt="FLAC"),
        lambda: encode_with_pyav(tone(2.0, 220.0, sr=44100, channels=2), 44100, "mp3", "libmp3lame", "stereo"),
        lambda: encode_with_pyav(tone(2.0, 220.0, sr=48000), 48000, "ogg", "libopus"),
    ],
    ids=["wav-stereo-44k", "wav-float-16k", "flac-stereo-48k", "mp3-stereo", "ogg-opus"],
)
def test_formats_decode_to_mono_24k(make):
    waveform = decode_reference(make(), max_seconds=30)
    assert waveform.ndim == 1 and waveform.dtype == np.float32
    assert abs(len(waveform) / SR - 2.0) < 0.1
    assert 0.05 < np.sqrt(np.mean(waveform**2)) < 0.5


@pytest.mark.parametrize("data", [b"", b"not audio at all" * 100, bytes(range(256)) * 50])
def test_garbage_is_refused(data):
    with pytest.raises(AudioSampleError):
        decode_reference(data, max_seconds=30)


def test_too_long_is_refused():
    with pytest.raises(AudioSampleError, match="longer"):
        decode_reference(wav_bytes(tone(5.0, 220.0), SR), max_seconds=3)


def test_too_short_is_refused():
    with pytest.raises(AudioSampleError, match="shorter"):
        decode_reference(wav_bytes(tone(0.1, 220.0), SR), max_seconds=30)
