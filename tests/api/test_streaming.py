"""Streaming on a live server: every format incremental and complete, SSE, long input, disconnects."""

import base64
import json
import time

import httpx
import pytest
from helpers import (
    SR,
    LiveServer,
    capped_copy,
    cpu_settings,
    decode_audio,
    raw_speech_request,
    recorded_streams,
    server_fixture,
)

from qwen_tts_api.text.segment import split_text

FRAME = 1920 / SR
TEXT = "Streaming should start long before the utterance ends."


def stream_chunks(client, **kwargs) -> list[bytes]:
    kwargs.setdefault("model", "qwen3-tts")
    kwargs.setdefault("voice", "alloy")
    kwargs.setdefault("input", TEXT)
    with client.audio.speech.with_streaming_response.create(**kwargs) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        return [chunk for chunk in response.iter_bytes() if chunk]


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_streamed_format_is_incremental_and_complete(client, fmt):
    chunks = stream_chunks(client, response_format=fmt)
    assert len(chunks) > 2, "audio arrives in several pieces"
    whole = client.audio.speech.create(
        model="qwen3-tts", voice="alloy", input=TEXT, response_format=fmt, extra_body={"stream": False}
    ).content
    streamed = decode_audio(b"".join(chunks), fmt)
    complete = decode_audio(whole, fmt)
    assert streamed.rate == complete.rate and streamed.samples.ndim == 1
    # No missing tail: the stream decodes to the full length (mp3 keeps its encoder padding).
    assert abs(streamed.duration - complete.duration) <= FRAME


def test_streamed_pcm_equals_whole_pcm(client):
    chunks = stream_chunks(client, response_format="pcm")
    whole = client.audio.speech.create(
        model="qwen3-tts", voice="alloy", input=TEXT, response_format="pcm", extra_body={"stream": False}
    ).content
    assert b"".join(chunks) == whole


def test_first_audio_arrives_early(server):
    body = {
        "model": "qwen3-tts",
        "input": "A longer sentence keeps the generator busy for a while. " * 4,
        "response_format": "pcm",
    }
    with httpx.Client(base_url=server.url, timeout=300) as http:
        started = time.perf_counter()
        with http.stream("POST", "/v1/audio/speech", json=body) as response:
            pieces = response.iter_bytes()
            first = next(pieces)
            first_at = time.perf_counter() - started
            rest = b"".join(pieces)
        total = time.perf_counter() - started
    assert first and rest
    assert first_at < total / 4, (first_at, total)


def sse_events(server, **body) -> list[dict]:
    payload = {"model": "qwen3-tts", "voice": "alloy", "input": TEXT, "stream_format": "sse", **body}
    with (
        httpx.Client(base_url=server.url, timeout=300) as http,
        http.stream("POST", "/v1/audio/speech", json=payload) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    return [json.loads(line[len("data: ") :]) for line in lines]


def test_sse_deltas_and_done(server, client):
    events = sse_events(server, response_format="pcm")
    deltas, done = events[:-1], events[-1]
    assert len(deltas) > 2 and all(e["type"] == "speech.audio.delta" for e in deltas)
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    whole = client.audio.speech.create(
        model="qwen3-tts", voice="alloy", input=TEXT, response_format="pcm", extra_body={"stream": False}
    ).content
    assert audio == whole
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] > 10
    assert usage["output_tokens"] == round(len(whole) / 2 / 1920)  # one token per 80 ms codec frame
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_sse_in_mp3(server):
    events = sse_events(server, response_format="mp3")
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert decode_audio(audio).container == "mp3" and decode_audio(audio).duration > 1.0


@server_fixture(scope="module")
def capped_server(demo_models, tmp_path_factory):
    """The demo CustomVoice model with a 20-frame limit per segment, so 4096 characters stay fast."""
    path = capped_copy(demo_models["customvoice"], tmp_path_factory.mktemp("capped"))
    with LiveServer(cpu_settings(customvoice_model_path=path)) as live:
        yield live


LONG_TEXT = " ".join(f"Sentence number {i} talks about something new, and then it ends." for i in range(70))[:4096]


@pytest.mark.parametrize("length", [4096, 2048])
def test_long_input_is_spoken_to_the_end(capped_server, length):
    text = LONG_TEXT[:length]
    segments = split_text(text)
    assert len(segments) >= 6
    audio = (
        capped_server.openai()
        .audio.speech.create(model="qwen3-tts", voice="alloy", input=text, response_format="wav")
        .content
    )
    # Every segment produced its 20 frames: nothing was dropped or cut short.
    assert decode_audio(audio).duration == pytest.approx(len(segments) * 20 * FRAME, abs=0.01)


def test_disconnect_stops_generation_and_frees_worker(server, http):
    short = {"model": "qwen3-tts", "input": "Hi.", "response_format": "pcm"}
    http.post("/v1/audio/speech", json=short)  # warm
    began = time.perf_counter()
    http.post("/v1/audio/speech", json=short)
    alone = time.perf_counter() - began

    with recorded_streams(server.app.state.server.engine) as streams:
        long_body = {"model": "qwen3-tts", "input": "Words keep coming without an end. " * 40, "response_format": "pcm"}
        with raw_speech_request(server.port, long_body) as sock:
            assert b"200 OK" in sock.recv(65536)  # headers and the first audio
    began = time.perf_counter()
    response = http.post("/v1/audio/speech", json=short)
    after = time.perf_counter() - began
    assert response.status_code == 200
    # The long request had minutes of audio left; the next request ran as if alone.
    assert after < alone + 2.0, (after, alone)
    assert streams[0].cancelled
    assert streams[0].usage.output_frames < 3 + 2 * 12, "stopped within about one chunk"
