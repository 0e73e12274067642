"""Decoding together on a live server (``QWEN_TTS_DECODE_TOGETHER=on``, what a GPU does by
default): concurrent streams' chunks are decoded in shared codec calls, and each client
still hears its own complete audio, within rounding of the same request made alone; a
request's first audio still comes first; a shared call that fails leaves each stream to
decode alone, and a stream whose decoding fails fails alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from helpers import LiveServer, cpu_settings, decode_audio, error_of, server_fixture

from qwen_tts_api.engine.generation import streaming_decoder
from qwen_tts_api.engine.generation.streaming_decoder import StreamingDecoder

BODY = {
    "model": "qwen3-tts",
    "voice": "vivian",
    "language": "English",
    "response_format": "wav",
    "temperature": 0,
    "stream": False,
}
TEXTS = [f"Client {i} asks for a sentence of its own." + " More words." * (i % 4) for i in range(12)]
TOLERANCE = 3e-4  # float32 codec rounding (about 1e-5) and 16-bit samples (3e-5 a step)


@server_fixture(scope="module", params=["off", "on"], ids=["inline", "audio-thread"])
def server(request, demo_models):
    settings = cpu_settings(
        customvoice_model_path=demo_models["customvoice"], decode_together="on", decode_thread=request.param
    )
    with LiveServer(settings) as live:
        yield live


def speak(server: LiveServer, text: str, **extra) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=300) as http:
        return http.post("/v1/audio/speech", json={**BODY, "input": text, **extra})


def codec_calls(monkeypatch) -> list[int]:
    """Streams in each codec call from now on."""
    calls: list[int] = []
    original = StreamingDecoder.decode_batch
    monkeypatch.setattr(StreamingDecoder, "decode_batch", lambda self, c: calls.append(c.shape[0]) or original(self, c))
    return calls


def test_concurrent_streams_share_codec_calls_and_each_hears_its_own_audio(server, monkeypatch):
    alone = [decode_audio(speak(server, text).content) for text in TEXTS[:4]]
    calls = codec_calls(monkeypatch)
    with ThreadPoolExecutor(len(TEXTS)) as pool:
        responses = list(pool.map(lambda t: speak(server, t, stream=True), TEXTS))
    assert [r.status_code for r in responses] == [200] * len(TEXTS)
    assert max(calls) >= 4, calls  # chunks of several streams in one call
    assert len(calls) < sum(len(r.content) for r in responses) // 2 // 1920 / 4  # far fewer calls than frames
    heard = [decode_audio(r.content) for r in responses]
    for i, expected in enumerate(alone):
        assert heard[i].rate == expected.rate and len(heard[i].samples) == len(expected.samples)
        difference = np.abs(heard[i].samples.astype(np.float64) - expected.samples.astype(np.float64)).max()
        assert difference <= TOLERANCE * 32768, (i, difference)
    durations = [audio.duration for audio in heard]
    assert durations[3] > durations[0]  # longer text, longer audio: each its own


def test_a_shared_call_that_fails_leaves_each_stream_to_decode_alone(server, monkeypatch):
    alone = decode_audio(speak(server, TEXTS[1]).content)
    original = streaming_decoder.StreamingDecoder.decode_batch

    def fails_together(self, codes):
        if codes.shape[0] > 1:
            raise RuntimeError("a shared codec call failed")
        return original(self, codes)

    monkeypatch.setattr(StreamingDecoder, "decode_batch", fails_together)
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda t: speak(server, t), [TEXTS[1]] * 4))
    assert [r.status_code for r in responses] == [200] * 4
    for response in responses:
        heard = decode_audio(response.content).samples.astype(np.float64)
        assert len(heard) == len(alone.samples)
        assert np.abs(heard - alone.samples.astype(np.float64)).max() <= TOLERANCE * 32768


def test_a_stream_whose_decoding_fails_fails_alone(server, monkeypatch):
    """The long request's decoding fails once the short one has ended; the short one, decoded
    with it until then, is whole."""
    short, long = TEXTS[0], TEXTS[3] * 3
    expected = np.frombuffer(speak(server, short, response_format="pcm").content, np.int16)
    limit = len(expected) // 1920 + 8  # frames: only the long request's decoder gets this far

    def too_far(decoder: StreamingDecoder, frames) -> bool:
        return sum(decoder.state().positions) + len(frames) > limit

    decode_chunk, together = StreamingDecoder.decode_chunk, streaming_decoder.decode_together

    def chunk_fails_late(self, frames, decoded=None):
        if too_far(self, frames):
            raise RuntimeError("decoder exploded")
        return decode_chunk(self, frames, decoded)

    def together_fails_late(tts, decoders, chunks):
        if any(too_far(decoder, chunk) for decoder, chunk in zip(decoders, chunks)):
            raise RuntimeError("decoder exploded")
        return together(tts, decoders, chunks)

    monkeypatch.setattr(StreamingDecoder, "decode_chunk", chunk_fails_late)
    monkeypatch.setattr("qwen_tts_api.engine.runtime.stream_audio.decode_together", together_fails_late)
    with ThreadPoolExecutor(2) as pool:
        failed, survived = pool.map(lambda t: speak(server, t, response_format="pcm"), [long, short])
    assert failed.status_code == 500 and "decoding" in error_of(failed)["message"]
    assert survived.status_code == 200
    heard = np.frombuffer(survived.content, np.int16).astype(np.float64)
    assert len(heard) == len(expected) and np.abs(heard - expected).max() <= TOLERANCE * 32768
    assert speak(server, short).status_code == 200  # the server goes on


@pytest.mark.parametrize("setting, expected", [("on", True), ("off", False)])
def test_the_setting_decides_unless_auto(demo_models, setting, expected):
    from qwen_tts_api.engine.models.loading import load_model

    tts = load_model("customvoice", demo_models["customvoice"], cpu_settings(), dtype="float32").tts
    assert streaming_decoder.decodes_together(tts, setting) is expected
    exact = streaming_decoder.probe_decoding_together(tts)  # a CPU's auto follows the probe
    assert streaming_decoder.decodes_together(tts, "auto") is exact
