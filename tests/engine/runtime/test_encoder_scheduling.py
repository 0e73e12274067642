"""Reference encoding (voice uploads, inline audio_sample) is model work like speech: it is
admitted through the same queue, and a generation step of the batch in flight never waits
for more than one encoder call."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
from helpers import SR, LiveServer, cpu_settings, error_of, server_fixture, slowed_steps

from qwen_tts_api.constants import ModelKind
from qwen_tts_api.engine.generation.clone import PromptCache

LONG = "A long stream keeps the batch busy while references are encoded next to it. " * 3


def reference(freq: float) -> bytes:
    t = np.arange(int(1.5 * SR)) / SR
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR, format="WAV")
    return buf.getvalue()


@pytest.fixture
def timeline(server, monkeypatch):
    """Steps and encoder calls in the order the scheduler thread made them."""
    engine = server.app.state.server.engine
    events: list[str] = []
    compute = PromptCache.compute

    def counting_compute(self, *args):
        events.append("encode")
        return compute(self, *args)

    remove = engine.add_step_observer(lambda _stats: events.append("step"))
    monkeypatch.setattr(PromptCache, "compute", counting_compute)
    yield events
    remove()


def test_uploads_and_inline_references_never_hold_a_step_for_more_than_one_encoder_call(server, timeline):
    uploads: list[httpx.Response] = []
    inline: list[httpx.Response] = []

    def upload(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            uploads.append(
                http.post(
                    "/v1/audio/voices",
                    data={"name": f"pace-{i}-{time.monotonic_ns()}"},
                    files={"audio_sample": ("ref.wav", reference(150 + 40 * i), "audio/wav")},
                )
            )

    def clone(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            sample = base64.b64encode(reference(500 + 40 * i)).decode()
            body = {"model": "qwen3-tts", "input": "Hi.", "response_format": "pcm", "audio_sample": sample}
            inline.append(http.post("/v1/audio/speech", json=body))

    received, workers = 0, []
    with httpx.Client(base_url=server.url, timeout=300) as http:
        body = {"model": "qwen3-tts", "voice": "alloy", "input": LONG, "response_format": "pcm"}
        with http.stream("POST", "/v1/audio/speech", json=body) as r:
            for chunk in r.iter_bytes():
                if not workers:  # the stream is flowing: 4 uploads and 2 inline clones arrive at once
                    workers = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
                    workers += [threading.Thread(target=clone, args=(i,)) for i in range(2)]
                    for worker in workers:
                        worker.start()
                received += len(chunk)
    for worker in workers:
        worker.join(timeout=300)
    assert [r.status_code for r in uploads] == [200] * 4 and [r.status_code for r in inline] == [200] * 2
    assert received / 2 / SR > 3.0
    assert timeline.count("encode") == 6
    # Between two steps, at most one encoder call: the stream kept its pace.
    between, most = 0, 0
    for event in timeline:
        between = between + 1 if event == "encode" else 0
        most = max(most, between)
    assert most == 1, timeline
    for voice in (r.json() for r in uploads):
        httpx.delete(f"{server.url}/v1/audio/voices/{voice['id']}")


@server_fixture(scope="module")
def one_place(demo_models):
    settings = cpu_settings(
        customvoice_model_path=demo_models["customvoice"],
        base_model_path=demo_models["base"],
        max_batch=1,
        max_queue=0,
    )
    with LiveServer(settings) as live:
        yield live


def test_an_upload_takes_a_place_in_the_queue(one_place):
    runner = one_place.app.state.server.engine.runner
    with httpx.Client(base_url=one_place.url, timeout=300) as http:
        body = {"model": "qwen3-tts", "voice": "alloy", "input": LONG, "response_format": "pcm"}
        # Slowed, so that the stream still holds its place when the upload arrives on any machine.
        with (
            slowed_steps(one_place.app.state.server.engine, 0.02),
            http.stream("POST", "/v1/audio/speech", json=body) as r,
        ):
            chunks = r.iter_bytes()  # held: a dropped iterator closes the response, cancelling the stream
            next(chunks)  # generating: the only place is taken
            assert runner.generating(ModelKind.CUSTOMVOICE) == 1
            busy = http.post(
                "/v1/audio/voices",
                data={"name": "no-room"},
                files={"audio_sample": ("ref.wav", reference(200), "audio/wav")},
            )
            assert busy.status_code == 429 and error_of(busy)["code"] == "server_busy"
            assert int(busy.headers["retry-after"]) >= 1
        admission = one_place.app.state.server.engine.admission
        deadline = time.monotonic() + 30
        while admission.active and time.monotonic() < deadline:  # the cancelled stream gives its place back
            time.sleep(0.02)
        created = http.post(
            "/v1/audio/voices",
            data={"name": "room-now"},
            files={"audio_sample": ("ref.wav", reference(200), "audio/wav")},
        )
        assert created.status_code == 200
