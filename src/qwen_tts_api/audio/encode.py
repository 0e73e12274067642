"""Encoders from float32 mono samples to the six OpenAI response formats and G.711's two
telephony encodings (``ulaw``, ``alaw``: 8-bit, headerless like ``pcm``).

Every encoder takes audio in pieces (``encode``) and ends with ``finish``, so the same
code serves whole responses and streamed ones, at the response's sample rate. Compressed
formats and G.711 go through PyAV, which bundles FFmpeg's encoders: no system ffmpeg is needed.
"""

from __future__ import annotations

import io
import struct
from typing import Protocol

import av
import numpy as np

from ..constants import SAMPLE_RATE

CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    # G.711: audio/basic is μ-law (RFC 2046); A-law has no registered "basic" type, and
    # audio/x-alaw-basic is what FFmpeg and GStreamer call it.
    "ulaw": "audio/basic",
    "alaw": "audio/x-alaw-basic",
}
RESPONSE_FORMATS = tuple(CONTENT_TYPES)
# Formats whose sample rate is not the model's when the request does not say: telephony's 8 kHz.
DEFAULT_SAMPLE_RATES = {"ulaw": 8000, "alaw": 8000}
# Rates an encoder cannot take: Opus runs at 8, 12, 16, 24 or 48 kHz only.
UNSUPPORTED_RATES = {"opus": (22050, 44100)}
_G711_CODECS = {"ulaw": "pcm_mulaw", "alaw": "pcm_alaw"}

# Ogg would otherwise hold a page for up to a second; 20 ms pages keep streams live.
_CONTAINER_OPTIONS = {"ogg": {"page_duration": "20000"}}

# format -> (container, codec, bit rate or None for lossless)
_PYAV_FORMATS: dict[str, tuple[str, str, int | None]] = {
    "mp3": ("mp3", "libmp3lame", 64_000),
    "opus": ("ogg", "libopus", 32_000),
    "aac": ("adts", "aac", 64_000),
    "flac": ("flac", "flac", None),
}


class AudioEncoder(Protocol):
    def encode(self, samples: np.ndarray) -> bytes: ...

    def finish(self) -> bytes: ...


def to_pcm16(samples: np.ndarray) -> bytes:
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def wav_header(num_samples: int | None, rate: int = SAMPLE_RATE) -> bytes:
    """RIFF header for 16-bit mono PCM; unknown length (streaming) uses the maximum sizes."""
    data_size = 0xFFFFFFFF if num_samples is None else num_samples * 2
    riff_size = 0xFFFFFFFF if num_samples is None else 36 + data_size
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


class PcmEncoder:
    def encode(self, samples: np.ndarray) -> bytes:
        return to_pcm16(samples)

    def finish(self) -> bytes:
        return b""


class WavEncoder:
    """A WAV stream: header first (exact when the length is known up front), then PCM."""

    def __init__(self, total_samples: int | None = None, rate: int = SAMPLE_RATE):
        self._header: bytes | None = wav_header(total_samples, rate)

    def encode(self, samples: np.ndarray) -> bytes:
        head, self._header = self._header or b"", None
        return head + to_pcm16(samples)

    def finish(self) -> bytes:
        head, self._header = self._header or b"", None
        return head


class G711Encoder:
    """μ-law or A-law, one byte a sample, no header (FFmpeg's pcm_mulaw / pcm_alaw)."""

    def __init__(self, fmt: str, rate: int):
        codec = av.CodecContext.create(_G711_CODECS[fmt], "w")
        assert isinstance(codec, av.AudioCodecContext)
        codec.sample_rate, codec.format, codec.layout = rate, "s16", "mono"
        self._codec = codec
        self._rate = rate

    def encode(self, samples: np.ndarray) -> bytes:
        if not samples.size:
            return b""
        pcm = np.frombuffer(to_pcm16(samples), dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self._rate
        return b"".join(bytes(packet) for packet in self._codec.encode(frame))

    def finish(self) -> bytes:
        return b"".join(bytes(packet) for packet in self._codec.encode(None))


class _Drain(io.RawIOBase):
    """A write-only sink whose contents are taken out after each step."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


class PyAVEncoder:
    """``whole=True`` writes into a seekable buffer and returns everything at ``finish``:
    the muxer can then go back and fill in headers (mp3's gapless LAME tag), so decoders
    trim the encoder delay exactly. Streaming uses a forward-only drain instead."""

    def __init__(self, fmt: str, whole: bool = False, rate: int = SAMPLE_RATE):
        container_fmt, codec, bit_rate = _PYAV_FORMATS[fmt]
        self._rate = rate
        self._whole = whole
        self._sink: _Drain | io.BytesIO = io.BytesIO() if whole else _Drain()
        self._container = av.open(
            self._sink, mode="w", format=container_fmt, container_options=_CONTAINER_OPTIONS.get(container_fmt, {})
        )
        stream = self._container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        self._stream = stream
        if bit_rate:
            self._stream.bit_rate = bit_rate
        self._pts = 0

    def _mux(self, frame: av.AudioFrame | None) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def encode(self, samples: np.ndarray) -> bytes:
        samples = np.ascontiguousarray(np.clip(samples, -1.0, 1.0), dtype=np.float32)
        if samples.size:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = self._rate
            frame.pts = self._pts
            self._pts += samples.size
            self._mux(frame)
        return self._take()

    def finish(self) -> bytes:
        self._mux(None)
        self._container.close()
        return self._take(final=True)

    def _take(self, final: bool = False) -> bytes:
        if isinstance(self._sink, _Drain):
            return self._sink.take()
        return self._sink.getvalue() if final else b""


def make_encoder(fmt: str, total_samples: int | None = None, rate: int = SAMPLE_RATE) -> AudioEncoder:
    """``total_samples`` known up front means a whole response; None means a stream.
    ``rate``: the samples' rate, which the output declares."""
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return WavEncoder(total_samples, rate)
    if fmt in _G711_CODECS:
        return G711Encoder(fmt, rate)
    if fmt in _PYAV_FORMATS:
        return PyAVEncoder(fmt, whole=total_samples is not None, rate=rate)
    raise ValueError(f"unknown response format {fmt!r}")


def encode_audio(samples: np.ndarray, fmt: str, rate: int = SAMPLE_RATE) -> bytes:
    """Encode a whole utterance."""
    encoder = make_encoder(fmt, total_samples=len(samples), rate=rate)
    return encoder.encode(samples) + encoder.finish()
