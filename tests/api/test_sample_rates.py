"""Output sample rates and G.711 telephony encodings: what a client gets at each rate, whole,
streamed and over the WebSocket, decoded by FFmpeg (PyAV) as a player would."""

from __future__ import annotations

import base64
import io
import json

import av
import httpx
import numpy as np
import pytest
from helpers import SR, decode_audio, error_of
from live_socket import FRAMES, SAMPLES_PER_FRAME, open_socket, send, speak, words

from qwen_tts_api.audio.render import Renderer
from qwen_tts_api.audio.resample import SAMPLE_RATES, StreamResampler, resample

BODY = {"model": "qwen3-tts", "voice": "alloy", "input": "Rates for every pipeline.", "language": "English"}
OTHER_RATES = [rate for rate in SAMPLE_RATES if rate != SR]


def tone(seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.4 * np.sin(2 * np.pi * 330 * t) + 0.2 * np.sin(2 * np.pi * 1700 * t)).astype(np.float32)


def g711_decode(data: bytes, fmt: str, rate: int) -> np.ndarray:
    """FFmpeg's own pcm_mulaw / pcm_alaw decoder."""
    codec = av.CodecContext.create({"ulaw": "pcm_mulaw", "alaw": "pcm_alaw"}[fmt], "r")
    codec.sample_rate, codec.layout = rate, "mono"
    frames = codec.decode(av.Packet(data))
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32) / 32768


# --- the resampler and encoders alone ---


@pytest.mark.parametrize("rate", OTHER_RATES)
def test_a_stream_resampled_in_chunks_equals_the_whole_resampled(rate):
    audio = tone()
    whole = resample(audio, rate)
    assert len(whole) == len(audio) * rate // SR
    resampler, parts, start = StreamResampler(rate), [], 0
    for size in [1, 7, 1920, 333, 5000] * 20:
        parts.append(resampler.process(audio[start : start + size]))
        start += size
    parts += [resampler.process(audio[start:]), resampler.flush()]
    assert np.array_equal(np.concatenate(parts), whole)


def test_the_model_rate_is_untouched():
    audio = tone()
    assert resample(audio, SR) is audio
    renderer = Renderer("pcm", 1.0, SR)
    assert renderer.whole(audio) == Renderer("pcm", 1.0).whole(audio)


@pytest.mark.parametrize("fmt", ["ulaw", "alaw"])
def test_g711_decodes_to_the_pcm_waveform_within_its_quantisation(fmt):
    audio = tone()
    pcm = np.frombuffer(Renderer("pcm", 1.0, 8000).whole(audio), "<i2").astype(np.float32) / 32768
    body = Renderer(fmt, 1.0, 8000).whole(audio)
    assert len(body) == len(pcm)  # one byte a sample, no header
    decoded = g711_decode(body, fmt, 8000)
    # G.711 keeps about 13 bits of range in 8: the error grows with the amplitude (under 3 %).
    assert np.all(np.abs(decoded - pcm) <= 0.03 * np.abs(pcm) + 2e-3)
    streamed = Renderer(fmt, 1.0, 8000)
    assert b"".join([streamed.chunk(audio[:1000]), streamed.chunk(audio[1000:]), streamed.finish()]) == body


# --- on a live server ---


def speech(http: httpx.Client, **extra) -> httpx.Response:
    return http.post("/v1/audio/speech", json={**BODY, "stream": False, **extra})


@pytest.mark.parametrize("rate", OTHER_RATES)
def test_each_rate_decodes_at_that_rate_with_the_same_duration(http, rate):
    native = decode_audio(speech(http, response_format="wav").content, "wav")
    for fmt in ("wav", "flac", "mp3"):
        r = speech(http, response_format=fmt, sample_rate=rate)
        assert r.status_code == 200
        decoded = decode_audio(r.content, fmt)
        assert decoded.rate == rate
        assert abs(decoded.duration - native.duration) < 0.06  # mp3 may pad a frame at the end


def test_24000_is_byte_for_byte_what_it_was(http):
    for fmt in ("pcm", "wav", "mp3"):
        assert speech(http, response_format=fmt, sample_rate=24000).content == speech(http, response_format=fmt).content


def test_streamed_equals_whole_at_another_rate(http):
    whole = speech(http, response_format="pcm", sample_rate=16000).content
    with http.stream("POST", "/v1/audio/speech", json={**BODY, "response_format": "pcm", "sample_rate": 16000}) as r:
        streamed = b"".join(r.iter_bytes())
    assert streamed == whole
    native = speech(http, response_format="pcm").content
    assert len(whole) == len(native) * 16000 // SR


def test_sse_carries_the_asked_rate(http):
    payload = {**BODY, "response_format": "pcm", "sample_rate": 8000, "stream_format": "sse"}
    with http.stream("POST", "/v1/audio/speech", json=payload) as r:
        events = [json.loads(line[len("data: ") :]) for line in r.iter_lines() if line]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert audio == speech(http, response_format="pcm", sample_rate=8000).content


@pytest.mark.parametrize(("fmt", "content_type"), [("ulaw", "audio/basic"), ("alaw", "audio/x-alaw-basic")])
def test_telephony_encodings_default_to_8000(http, fmt, content_type):
    r = speech(http, response_format=fmt)
    assert r.status_code == 200 and r.headers["content-type"] == content_type
    pcm = speech(http, response_format="pcm", sample_rate=8000).content
    assert len(r.content) == len(pcm) // 2  # 8 kHz, one byte a sample
    reference = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    assert np.all(np.abs(g711_decode(r.content, fmt, 8000) - reference) <= 0.03 * np.abs(reference) + 2e-3)
    with http.stream("POST", "/v1/audio/speech", json={**BODY, "response_format": fmt}) as streamed:
        assert b"".join(streamed.iter_bytes()) == r.content
    wideband = speech(http, response_format=fmt, sample_rate=16000)
    assert len(wideband.content) == 2 * len(r.content)


@pytest.mark.parametrize(
    "extra",
    [
        {"sample_rate": 11025},
        {"sample_rate": 0},
        {"sample_rate": "fast"},
        {"response_format": "opus", "sample_rate": 44100},
        {"response_format": "opus", "sample_rate": 22050},
    ],
)
def test_a_rate_that_cannot_be_served_is_a_400_naming_it(http, extra):
    r = speech(http, **extra)
    assert r.status_code == 400
    assert error_of(r)["param"] == "sample_rate"


def test_the_socket_speaks_at_the_asked_rate(server):
    with open_socket(server) as ws:
        config = {"voice": "vivian", "response_format": "pcm", "stream_audio": True, "max_new_tokens": FRAMES}
        send(ws, type="session.config", sample_rate=16000, **config)
        events, audio = speak(ws, words("Hello there, a socket at sixteen kilohertz."))
    starts = [e for e in events if e["type"] == "audio.start"]
    assert starts and all(e["sample_rate"] == 16000 for e in starts)
    frames = events[-1]["usage"]["output_tokens"]
    samples = sum(len(a) for a in audio.values()) // 2
    assert abs(samples - frames * SAMPLES_PER_FRAME * 16000 // SR) <= 16 * len(audio)  # each part's filter tail


def test_the_socket_refuses_a_rate_it_cannot_serve(server):
    with open_socket(server) as ws:
        send(ws, type="session.config", voice="vivian", sample_rate=12345)
        error = json.loads(ws.recv(timeout=30))
        assert error["type"] == "error" and error["param"] == "sample_rate"


def test_openapi_lists_the_rate_and_the_encodings(http):
    schema = http.get("/openapi.json").json()["components"]["schemas"]["SpeechRequest"]["properties"]
    assert "sample_rate" in schema
    formats = schema["response_format"].get("enum") or schema["response_format"]["anyOf"][0]["enum"]
    assert {"ulaw", "alaw"} <= set(formats)


def test_a_body_decodes_as_a_player_reads_it(http):
    """The wav header says the rate the samples are at."""
    r = speech(http, response_format="wav", sample_rate=44100)
    with av.open(io.BytesIO(r.content)) as container:
        assert container.streams.audio[0].codec_context.sample_rate == 44100
