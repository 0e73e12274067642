"""Admission control on a live server: bounded queue (429 + Retry-After), timeouts, abandoned requests."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import (
    LiveServer,
    batch_sizes,
    burst_in_one_step,
    cpu_settings,
    decode_audio,
    raw_speech_request,
    recorded_streams,
    server_fixture,
    slowed_steps,
)

from qwen_tts_api.engine.errors import EngineBusy
from qwen_tts_api.engine.runtime.admission import Admission

BODY = {
    "model": "qwen3-tts",
    "voice": "alloy",
    "input": "A sentence of moderate length for the queue.",
    "response_format": "wav",
    "stream": False,
}


def test_sixteen_concurrent_clients_all_get_complete_audio(server):
    texts = [f"Client number {i} asks for a sentence of its own." + " More." * (i % 4) for i in range(16)]

    def ask(i):
        with httpx.Client(base_url=server.url, timeout=600) as http:
            return http.post("/v1/audio/speech", json={**BODY, "input": texts[i], "stream": True})

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(ask, range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    with httpx.Client(base_url=server.url, timeout=600) as http:
        for i in (0, 7, 15):  # batched audio equals the same request made alone
            alone = http.post("/v1/audio/speech", json={**BODY, "input": texts[i], "stream": False})
            assert decode_audio(alone.content).samples.tobytes() == decode_audio(responses[i].content).samples.tobytes()
    durations = [decode_audio(r.content).duration for r in responses]
    assert all(d > 1.0 for d in durations)
    assert durations[3] > durations[0]  # longer text, longer audio


def test_requests_arriving_during_a_prefill_make_their_first_frame_with_it(server, monkeypatch):
    """A burst: the first request's prefill runs at once, and those arriving meanwhile join
    before its first step, so all first frames come from one step (the latecomers do not
    wait for the first one's step and first chunk)."""
    engine = server.app.state.server.engine

    def ask(text: str) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            return http.post("/v1/audio/speech", json={**BODY, "input": text, "max_new_tokens": 6})

    texts = ["The first of a burst.", *(f"Latecomer number {i}." for i in range(3))]
    with batch_sizes(engine) as steps:
        responses = burst_in_one_step(monkeypatch, ask, texts)
    assert all(r.status_code == 200 for r in responses)
    assert steps[0] == 4, steps  # not [1, 4, ...]


def test_admission_counts_running_and_waiting():
    gate = Admission(max_waiting=2, workers=1)
    for _ in range(3):
        gate.admit()
    with pytest.raises(EngineBusy) as caught:
        gate.admit()
    assert caught.value.retry_after >= 1
    gate.release(2.0)
    gate.admit()


@server_fixture(scope="module")
def tiny_queue_server(demo_models):
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], max_batch=1, max_queue=1)
    with LiveServer(settings) as live:
        yield live


def test_full_queue_answers_429_and_recovers(tiny_queue_server):
    def post(_):
        with httpx.Client(base_url=tiny_queue_server.url, timeout=300) as http:
            return http.post("/v1/audio/speech", json=BODY)

    # Slowed steps: the first two are still generating and waiting when the others arrive.
    with slowed_steps(tiny_queue_server.app.state.server.engine, 0.01), ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) >= 2  # one in the batch and one waiting were always admitted
    for r in responses:
        if r.status_code == 429:
            error = r.json()["error"]
            assert error["type"] == "rate_limit_error" and error["code"] == "server_busy"
            assert int(r.headers["retry-after"]) >= 1
        else:
            assert decode_audio(r.content).duration > 1.0
    with httpx.Client(base_url=tiny_queue_server.url, timeout=300) as http:
        assert http.post("/v1/audio/speech", json=BODY).status_code == 200


@server_fixture(scope="module")
def impatient_server(demo_models):
    with LiveServer(
        cpu_settings(customvoice_model_path=demo_models["customvoice"], request_timeout_seconds=2.0)
    ) as live:
        yield live


@pytest.mark.parametrize("stream", [False, True])
def test_request_timeout_is_504(impatient_server, stream):
    # 10 ms more a step on any machine: the long text (about 480 frames) takes well over the
    # 2 s limit, "Hi." (about 30 frames) well under it.
    slowed = slowed_steps(impatient_server.app.state.server.engine, 0.01)
    with slowed, httpx.Client(base_url=impatient_server.url, timeout=300) as http:
        long = {**BODY, "input": "This will take far longer than two seconds to say. " * 6, "stream": stream}
        if stream:
            long["stream_format"] = "audio"
            # The first audio comes quickly, so a streamed response starts and then ends early.
            with http.stream("POST", "/v1/audio/speech", json=long) as r:
                assert r.status_code == 200
                with pytest.raises(httpx.HTTPError):
                    b"".join(r.iter_bytes())
        else:
            r = http.post("/v1/audio/speech", json=long)
            assert r.status_code == 504
            assert r.json()["error"]["code"] == "timeout"
        assert http.post("/v1/audio/speech", json={**BODY, "input": "Hi."}).status_code == 200


def test_queued_request_whose_client_left_never_starts(tiny_queue_server):
    """With the one place in the batch taken, the second request waits in the queue; its
    client leaves, and it is dropped there. (With a free place it would join the batch at
    once, racing the disconnect.)"""
    engine = tiny_queue_server.app.state.server.engine
    busy_body = {**BODY, "input": "Keep the worker busy for a few seconds with this text. " * 3}
    with recorded_streams(engine) as streams, httpx.Client(base_url=tiny_queue_server.url, timeout=300) as http:
        busy = threading.Thread(target=lambda: http.post("/v1/audio/speech", json=busy_body))
        busy.start()
        while not streams:
            time.sleep(0.01)
        with raw_speech_request(tiny_queue_server.port, {**BODY, "input": "Never needed."}):
            while len(streams) < 2:
                time.sleep(0.01)
        busy.join()
    abandoned = streams[1]
    deadline = time.monotonic() + 30
    while engine.admission.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert abandoned.cancelled and not abandoned.started
    assert engine.admission.active == 0
