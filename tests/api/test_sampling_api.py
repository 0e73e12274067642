"""Seeds and sampling settings per request, alone and batched (live demo server)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import batch_sizes, error_of
from websockets.sync.client import connect

TEXT = "Sampled speech, the same every time for the same seed."
BODY = {"model": "qwen3-tts", "voice": "vivian", "input": TEXT, "response_format": "pcm", "stream": False}


def speak(url: str, **extra) -> bytes:
    r = httpx.post(f"{url}/v1/audio/speech", json={**BODY, **extra}, timeout=120)
    assert r.status_code == 200, r.text
    return r.content


def test_a_seed_gives_the_same_audio_alone_and_batched(server):
    alone = speak(server.url, seed=1234, temperature=0.9)
    assert speak(server.url, seed=1234, temperature=0.9) == alone
    with batch_sizes(server.app.state.server.engine) as rows:
        others = [{"seed": 7, "temperature": 0.7}, {"temperature": 1.2, "top_k": 20}, {"input": "Something else."}]
        with ThreadPoolExecutor(4) as pool:
            batched = pool.submit(speak, server.url, seed=1234, temperature=0.9)
            for extra in others:
                pool.submit(speak, server.url, **extra)
            together = batched.result()
    assert max(rows) > 1  # it did share steps with the others
    assert together == alone


def test_different_seeds_differ_and_temperature_samples_a_greedy_model(server):
    greedy = speak(server.url)  # the demo models' generation config is greedy
    assert speak(server.url, temperature=0) == greedy
    one, two = speak(server.url, seed=1, temperature=0.9), speak(server.url, seed=2, temperature=0.9)
    assert one != two and greedy not in (one, two)
    # Without a seed, sampling differs from call to call.
    assert speak(server.url, temperature=1.0, top_p=0.95) != speak(server.url, temperature=1.0, top_p=0.95)


@pytest.mark.parametrize(
    "field, bad",
    [
        ("seed", -1),
        ("seed", 2**63),
        ("seed", "abc"),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("top_p", 0),
        ("top_p", 1.5),
        ("top_k", 0),
        ("top_k", 5000),
        ("repetition_penalty", 0.9),
        ("repetition_penalty", 3),
    ],
)
def test_each_sampling_field_out_of_range_is_a_400_naming_it(http, field, bad):
    r = http.post("/v1/audio/speech", json={**BODY, field: bad})
    assert r.status_code == 400
    assert error_of(r)["param"] == field


def test_the_socket_takes_a_seed_too(server):
    url = server.url.replace("http://", "ws://") + "/v1/audio/speech/stream"

    def turn() -> bytes:
        with connect(url, max_size=None) as ws:
            config = {"voice": "ryan", "response_format": "pcm", "max_new_tokens": 20, "seed": 99, "temperature": 0.8}
            ws.send(json.dumps({"type": "session.config", **config}))
            ws.send(json.dumps({"type": "input.text", "text": "Seeded on a socket."}))
            ws.send(json.dumps({"type": "input.done"}))
            audio = b""
            while True:
                message = ws.recv(timeout=60)
                if isinstance(message, bytes):
                    audio += message
                elif json.loads(message)["type"] == "session.done":
                    return audio

    assert turn() == turn()
