"""Encoders: every format decodes back to 24 kHz mono with the wav duration."""

import numpy as np
import pytest
from helpers import OPENAI_CONTENT_TYPES, SR, decode_audio, opus_head, tone

from qwen_tts_api.audio.encode import CONTENT_TYPES, encode_audio, make_encoder, wav_header

# AAC in ADTS has no way to signal the encoder's priming samples, so players hear
# up to one extra 1024-sample frame at the start and padding at the end.
AAC_PADDING = 2 * 1024 / SR


def test_content_types_match_openai():
    assert {fmt: CONTENT_TYPES[fmt] for fmt in OPENAI_CONTENT_TYPES} == OPENAI_CONTENT_TYPES
    assert set(CONTENT_TYPES) - set(OPENAI_CONTENT_TYPES) == {"ulaw", "alaw"}  # ours: G.711 for telephony


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_each_format_round_trips(fmt):
    samples = tone(1.52, 440.0)
    decoded = decode_audio(encode_audio(samples, fmt), fmt)
    assert decoded.samples.ndim == 1, "mono"
    if fmt == "opus":
        channels, input_rate = opus_head(encode_audio(samples, fmt))
        assert (channels, input_rate) == (1, SR)  # decoders play Opus at 48 kHz
    else:
        assert decoded.rate == SR
    tolerance = 0.05 + (AAC_PADDING if fmt == "aac" else 0.0)
    assert abs(decoded.duration - len(samples) / SR) <= tolerance
    # The content survives: a 440 Hz tone comes back as a 440 Hz tone.
    spectrum = np.abs(np.fft.rfft(decoded.samples))
    assert abs(np.argmax(spectrum) * decoded.rate / len(decoded.samples) - 440.0) < 5


def test_wav_and_pcm_are_exact_16_bit():
    samples = tone(0.5, 300.0)
    pcm = encode_audio(samples, "pcm")
    wav = encode_audio(samples, "wav")
    assert len(pcm) == 2 * len(samples)
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and wav[44:] == pcm
    assert np.max(np.abs(decode_audio(pcm, "pcm").samples - samples)) < 1e-4


def test_streaming_wav_header_marks_unknown_length():
    header = wav_header(None)
    assert header[4:8] == b"\xff\xff\xff\xff" and header[40:44] == b"\xff\xff\xff\xff"


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_chunked_encoding_decodes_completely(fmt):
    """Fed in pieces (as a stream will be), the output still holds all the audio."""
    samples = tone(2.0, 440.0)
    encoder = make_encoder(fmt)
    body = b"".join(encoder.encode(part) for part in np.array_split(samples, 7)) + encoder.finish()
    decoded = decode_audio(body, fmt)
    # A forward-only stream cannot carry mp3's gapless tag, so the encoder delay stays in.
    slack = 0.1 if fmt in ("mp3", "aac") else 0.05
    assert len(samples) / SR - 0.02 <= decoded.duration <= len(samples) / SR + slack
