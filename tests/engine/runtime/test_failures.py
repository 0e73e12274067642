"""Failures stay contained, on a live server: a row with NaN logits, a decoder that raises and
a step that raises each fail only the requests they touch, and the next request is served;
a scheduler that cannot go on turns /health and /ready to 503 and answers new requests 503."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable

import httpx
import pytest
import soundfile as sf
from helpers import SR, LiveServer, cpu_settings, error_of, server_fixture, tone, tone_wav

from qwen_tts_api.constants import ModelKind
from qwen_tts_api.engine.generation import talker_choice
from qwen_tts_api.engine.generation.batching import FrameBatch
from qwen_tts_api.engine.generation.clone import PromptCache
from qwen_tts_api.engine.generation.streaming_decoder import StreamingDecoder

LONG = "This request is long enough to stay in the batch for a good while. " * 3
SHORT = "A short one."


def speech(text: str, fmt: str = "pcm") -> dict:
    return {"model": "qwen3-tts", "voice": "alloy", "input": text, "response_format": fmt, "stream": False}


@server_fixture(scope="module")
def fragile(demo_models):
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], base_model_path=demo_models["base"])
    with LiveServer(settings) as live:
        yield live


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


class Background:
    """One request on its own thread; ``result()`` waits for its response."""

    def __init__(self, url: str, body: dict):
        self.response: httpx.Response | None = None
        self.thread = threading.Thread(target=self._run, args=(url, body))
        self.thread.start()

    def _run(self, url: str, body: dict) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            self.response = http.post("/v1/audio/speech", json=body)

    def result(self) -> httpx.Response:
        self.thread.join(timeout=300)
        assert self.response is not None
        return self.response


def in_the_batch(server: LiveServer) -> int:
    return server.app.state.server.engine.runner.generating(ModelKind.CUSTOMVOICE)


def two_in_the_batch(server: LiveServer) -> tuple[Background, Background]:
    """A long request, then a short one that joins it in the batch (rows 0 and 1)."""
    first = Background(server.url, speech(LONG))
    wait_until(lambda: in_the_batch(server) == 1)
    second = Background(server.url, speech(SHORT))
    wait_until(lambda: in_the_batch(server) == 2)
    return first, second


def alone(server: LiveServer, text: str) -> bytes:
    with httpx.Client(base_url=server.url, timeout=300) as http:
        r = http.post("/v1/audio/speech", json=speech(text))
        assert r.status_code == 200
        return r.content


def assert_healthy(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/ready").status_code == 200


def test_nan_logits_fail_their_row_and_the_batch_goes_on(fragile, monkeypatch):
    expected_short = alone(fragile, SHORT)
    head = fragile.app.state.server.engine.models["customvoice"].tts.model.talker.codec_head
    armed = threading.Event()
    rows_through = talker_choice.per_row  # how the step applies the talker's output head

    def poison_row_zero(x, weight, bias=None):
        output = rows_through(x, weight, bias)
        if weight is head.weight and armed.is_set() and output.shape[0] >= 2:
            armed.clear()
            output[0] = float("nan")
        return output

    first, second = two_in_the_batch(fragile)
    monkeypatch.setattr(talker_choice, "per_row", poison_row_zero)
    armed.set()
    failed, survived = first.result(), second.result()
    monkeypatch.undo()
    assert not armed.is_set(), "the hook fired"
    assert failed.status_code == 500
    error = error_of(failed)
    assert error["code"] == "generation_failed" and "non-finite" in error["message"]
    # The other row never noticed: its audio is what it is when generated alone.
    assert survived.status_code == 200 and survived.content == expected_short
    assert_healthy(fragile)
    assert alone(fragile, SHORT) == expected_short


@server_fixture(scope="module")
def fragile_threaded(demo_models):
    """Decoding on its own thread (QWEN_TTS_DECODE_THREAD=on)."""
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], decode_thread="on")
    with LiveServer(settings) as live:
        yield live


@pytest.mark.parametrize("server", ["fragile", "fragile_threaded"])
def test_a_decoder_that_raises_fails_only_its_request(server, request, monkeypatch):
    fragile = request.getfixturevalue(server)
    expected_short = alone(fragile, SHORT)
    short_frames = len(expected_short) // 2 // 1920  # 16-bit samples, 1920 a frame
    first, second = two_in_the_batch(fragile)
    push = StreamingDecoder.push

    def broken_past_the_short_one(self, frame):
        # Only the long request's decoder gets this far (on the audio thread, where there is one).
        if sum(self.state().positions) > short_frames:
            raise RuntimeError("decoder exploded")
        return push(self, frame)

    monkeypatch.setattr(StreamingDecoder, "push", broken_past_the_short_one)
    failed, survived = first.result(), second.result()
    assert failed.status_code == 500
    error = error_of(failed)
    assert error["code"] == "generation_failed" and "decoding" in error["message"]
    assert survived.status_code == 200 and survived.content == expected_short
    assert_healthy(fragile)


def test_a_step_that_raises_fails_its_batch_and_the_next_request_is_served(fragile, monkeypatch):
    expected_short = alone(fragile, SHORT)
    first = Background(fragile.url, speech(LONG))
    wait_until(lambda: in_the_batch(fragile) == 1)
    batches: list[FrameBatch] = []
    step, init = FrameBatch.step, FrameBatch.__init__

    def broken_once(self):
        monkeypatch.setattr(FrameBatch, "step", step)
        raise RuntimeError("step exploded")

    def counted(self, *args, **kwargs):
        batches.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(FrameBatch, "__init__", counted)
    monkeypatch.setattr(FrameBatch, "step", broken_once)
    failed = first.result()
    assert failed.status_code == 500 and error_of(failed)["code"] == "generation_failed"
    assert_healthy(fragile)
    assert alone(fragile, SHORT) == expected_short
    assert len(batches) == 1  # a fresh batch replaced the failed one


def test_a_failing_reference_encoder_fails_only_that_request(fragile, monkeypatch):
    wav = io.BytesIO()
    sf.write(wav, tone(1.5, 200.0), SR, format="WAV")
    sample = base64.b64encode(wav.getvalue()).decode()
    compute = PromptCache.compute

    def broken_once(*args, **kwargs):
        monkeypatch.setattr(PromptCache, "compute", compute)
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(PromptCache, "compute", broken_once)
    with httpx.Client(base_url=fragile.url, timeout=300) as http:
        r = http.post("/v1/audio/speech", json={**speech(SHORT), "audio_sample": sample})
        assert r.status_code == 500 and error_of(r)["code"] == "generation_failed"
        assert "reference encoding" in error_of(r)["message"]
        assert http.post("/v1/audio/speech", json={**speech(SHORT), "audio_sample": sample}).status_code == 200
    assert_healthy(fragile)


@pytest.mark.slow  # starts a server
def test_a_scheduler_that_cannot_go_on_says_so(demo_models, monkeypatch):
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], base_model_path=demo_models["base"])
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        assert http.get("/health").json() == {"status": "ok"}
        first = Background(live.url, speech(LONG))
        wait_until(lambda: in_the_batch(live) == 1)

        def device_lost(*_args):
            raise RuntimeError("CUDA error: device-side assert triggered")

        # The step fails, and so does every attempt to start afresh: the device is unusable.
        monkeypatch.setattr(FrameBatch, "__init__", device_lost)
        monkeypatch.setattr(FrameBatch, "step", device_lost)
        failed = first.result()
        assert failed.status_code == 500 and error_of(failed)["code"] == "generation_failed"

        health = http.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "failed" and "device-side assert" in health.json()["error"]
        ready = http.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        # New work is refused at once, not left to wait for a timeout: speech, and voice uploads.
        started = time.monotonic()
        r = http.post("/v1/audio/speech", json=speech(SHORT))
        assert r.status_code == 503 and error_of(r)["code"] == "engine_unavailable"
        r = http.post(
            "/v1/audio/voices",
            data={"name": "after-the-fall"},
            files={"audio_sample": ("ref.wav", tone_wav(1.5, 200.0), "audio/wav")},
        )
        assert r.status_code == 503 and error_of(r)["code"] == "engine_unavailable"
        assert time.monotonic() - started < 10
        assert live.app.state.server.engine.admission.active == 0, "every admission place was given back"
