"""Decoding on its own thread (QWEN_TTS_DECODE_THREAD=on), as a client hears it: the same
bytes in the same order as when the scheduler decodes, whole and streamed, with pauses and
several pieces; the decoder really runs on that thread; a request's first audio goes ahead
of other requests' work, never of its own, and the scheduler waits for it before its next
step; and a decoder that raises there fails its own request alone (test_failures.py runs
that on this server too)."""

from __future__ import annotations

import threading
import time

import httpx
import torch
from helpers import LiveServer, cpu_settings, server_fixture

from qwen_tts_api.engine.generation.batching import FrameBatch
from qwen_tts_api.engine.generation.streaming_decoder import StreamingDecoder
from qwen_tts_api.engine.runtime.audio_worker import AudioWorker, decode_thread_wanted

# Two pieces and a pause between them (three segments), greedy and capped: a known length.
BODY = {
    "model": "qwen3-tts",
    "voice": "vivian",
    "language": "English",
    "input": "One more time. [pause:300ms] And then the second piece.",
    "response_format": "pcm",
    "temperature": 0,
    "max_new_tokens": 12,
}


@server_fixture(scope="module")
def servers(demo_models):
    """The same model served twice: decoding on the scheduler thread, then on its own."""
    with (
        LiveServer(cpu_settings(customvoice_model_path=demo_models["customvoice"], decode_thread="off")) as plain,
        LiveServer(cpu_settings(customvoice_model_path=demo_models["customvoice"], decode_thread="on")) as threaded,
    ):
        yield plain, threaded


def speech(server: LiveServer, **extra) -> bytes:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        r = http.post("/v1/audio/speech", json={**BODY, **extra})
        assert r.status_code == 200, r.text
        return r.content


def test_only_the_threaded_server_decodes_on_its_own_thread(servers):
    plain, threaded = servers
    assert not plain.app.state.server.engine.decodes_on_its_own_thread
    assert threaded.app.state.server.engine.decodes_on_its_own_thread


def test_the_audio_thread_changes_no_byte(servers):
    plain, threaded = servers
    for stream in (False, True):
        expected = speech(plain, stream=stream)
        assert len(expected) > 2 * 0.3 * 24000  # the pause alone is 0.3 s of int16 samples
        assert speech(threaded, stream=stream) == expected


def test_several_requests_at_once_each_get_their_own_audio(servers):
    """Eight requests in one batch: each gets the bytes it gets alone (nothing interleaved)."""
    _, threaded = servers
    texts = [f"Request number {n} speaks." for n in range(8)]
    alone = [speech(threaded, input=text, stream=True) for text in texts]
    results: list[bytes | None] = [None] * len(texts)

    def run(i: int) -> None:
        results[i] = speech(threaded, input=texts[i], stream=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results == alone


def test_the_decoder_runs_on_the_audio_thread(servers, monkeypatch):
    _, threaded = servers
    seen: set[str] = set()
    original = StreamingDecoder.run

    def recording(self, frames):
        seen.add(threading.current_thread().name)
        return original(self, frames)

    monkeypatch.setattr(StreamingDecoder, "run", recording)
    speech(threaded, stream=True)
    assert seen == {"qwen-tts-audio"}


def busy_worker() -> tuple[AudioWorker, threading.Event]:
    """An audio thread busy until the event is set: work submitted meanwhile queues."""
    worker = AudioWorker()
    running, gate = threading.Event(), threading.Event()

    def hold() -> None:
        running.set()
        gate.wait(10)

    worker.submit("x", hold)
    assert running.wait(10)
    return worker, gate


def test_first_audio_goes_ahead_of_other_streams_but_never_of_its_own():
    worker, gate = busy_worker()  # what follows queues
    order: list[str] = []
    worker.submit("a", lambda: order.append("a: chunk 1"))
    worker.submit("a", lambda: order.append("a: chunk 2"))
    worker.submit("b", lambda: order.append("b: its pause"))
    worker.submit("b", lambda: order.append("b: first audio"), urgent=True)
    worker.submit("a", lambda: 1 / 0)  # a failure stops nothing
    worker.submit("a", lambda: order.append("a: end"))
    gate.set()
    worker.close()
    worker.join(10)
    assert order == ["b: its pause", "b: first audio", "a: chunk 1", "a: chunk 2", "a: end"]


def test_work_of_several_streams_runs_after_and_before_each_ones_own():
    """Chunks of several streams decoded in one call (decoding together): that work waits for
    what each of its streams queued before it, and their later work waits for it; an urgent
    one goes ahead of other streams' work, after its own streams' earlier work."""
    worker, gate = busy_worker()
    order: list[str] = []
    worker.submit("c", lambda: order.append("c: chunk"))
    worker.submit("a", lambda: order.append("a: chunk"))
    worker.submit_shared(("a", "b"), lambda: order.append("a+b: together"))
    worker.submit("b", lambda: order.append("b: end"))
    worker.submit("d", lambda: order.append("d: old"))
    worker.submit_shared(("d", "e"), lambda: order.append("d+e: first audio"), urgent=True)
    worker.submit("e", lambda: order.append("e: end"))
    gate.set()
    worker.close()
    worker.join(10)
    assert order == ["d: old", "d+e: first audio", "c: chunk", "a: chunk", "a+b: together", "b: end", "e: end"]


def test_waiting_for_first_audio_waits_for_urgent_work_only():
    worker = AudioWorker()
    busy, urgent_gate, waited = threading.Event(), threading.Event(), threading.Event()
    worker.submit("a", lambda: busy.wait(10))  # other work running does not hold the scheduler
    worker.wait_for_first_audio()

    def first_audio() -> None:
        urgent_gate.wait(10)
        raise RuntimeError("a failing first chunk still lets the scheduler go on")

    worker.submit("b", first_audio, urgent=True)
    waiter = threading.Thread(target=lambda: (worker.wait_for_first_audio(limit=60), waited.set()))
    waiter.start()
    assert not waited.wait(0.3)  # queued behind "a", then running: the scheduler waits
    busy.set()
    assert not waited.wait(0.3)
    worker.wait_for_first_audio(limit=0.1)  # but never longer than its limit
    assert not waited.is_set()
    urgent_gate.set()
    assert waited.wait(10)
    worker.close()
    worker.join(10)


def test_the_next_step_waits_for_a_first_chunk(servers, monkeypatch):
    """While a request's first chunk is decoded on the audio thread, the scheduler neither
    steps nor prefills: the chunk has the processor to itself."""
    _, threaded = servers
    events: list[str] = []
    original_run, original_step = StreamingDecoder.run, FrameBatch.step

    def run(self, frames):
        first = self.fresh
        events.append("first chunk starts" if first else "chunk")
        if first:
            time.sleep(0.3)  # long enough for a step to start beside it, if one could
            events.append("first chunk ends")
        return original_run(self, frames)

    def step(self):
        events.append("step")
        return original_step(self)

    monkeypatch.setattr(StreamingDecoder, "run", run)
    monkeypatch.setattr(FrameBatch, "step", step)
    speech(threaded, stream=True)
    start = events.index("first chunk starts")
    assert events[start + 1] == "first chunk ends" and "step" in events[start + 2 :]


def test_a_complete_response_has_no_urgent_work_and_the_streams_samples(servers, monkeypatch):
    """No one hears a complete response's first chunk early, so none of its work goes ahead
    of others' or holds a step; it is decoded in the stream's chunks, to the same bytes."""
    _, threaded = servers
    chunks: list[int] = []
    urgent: list[bool] = []
    original_run, original_submit = StreamingDecoder.run, AudioWorker.submit

    def run(self, frames):
        chunks.append(len(frames))
        return original_run(self, frames)

    def submit(self, stream, work, urgent_work: bool = False) -> None:
        urgent.append(urgent_work)
        original_submit(self, stream, work, urgent_work)

    monkeypatch.setattr(StreamingDecoder, "run", run)
    monkeypatch.setattr(AudioWorker, "submit", submit)
    seen = {}
    for stream in (True, False):
        chunks.clear()
        urgent.clear()
        audio = speech(threaded, stream=stream)
        seen[stream] = (list(chunks), any(urgent), audio)
    (streamed, streamed_urgent, streamed_audio), (whole, whole_urgent, whole_audio) = seen[True], seen[False]
    assert streamed_urgent and not whole_urgent
    assert whole == streamed and whole[0] == 1 and whole_audio == streamed_audio


def test_auto_decodes_on_its_own_thread_unless_a_cpu_runs_one_thread(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not decode_thread_wanted("auto", [cpu]) and decode_thread_wanted("auto", [cpu, gpu])
    assert decode_thread_wanted("on", [cpu]) and not decode_thread_wanted("off", [gpu])
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert decode_thread_wanted("auto", [cpu])
