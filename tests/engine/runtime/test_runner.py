"""The runner alone, driven by hand-made orders: no scheduler, no server. A start becomes a
row, each step a frame of audio in the request's stream, the end an ``Ended``; a dropped
request leaves its batch while the others go on; decoding that fails on the audio thread
tells the client and is reported once."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import TEST_DEVICE, cpu_settings
from runtime_fakes import CV, FakeStream

from qwen_tts_api.constants import SAMPLES_PER_FRAME
from qwen_tts_api.engine.errors import GenerationError
from qwen_tts_api.engine.generation.streaming_decoder import StreamingDecoder
from qwen_tts_api.engine.models.loading import load_model
from qwen_tts_api.engine.runtime.audio_worker import AudioWorker
from qwen_tts_api.engine.runtime.jobs import EngineConfig, SamplingChoice, SpeechJob
from qwen_tts_api.engine.runtime.orders import Ended, Orders, Start, Ticket
from qwen_tts_api.engine.runtime.runner import BatchRunner
from qwen_tts_api.text.prepare import prepare


@pytest.fixture(scope="module")
def customvoice(demo_models):
    return load_model(CV, demo_models["customvoice"], cpu_settings(device=TEST_DEVICE), dtype="float32")


def ticket(model, request_id: str, frames: int) -> tuple[Ticket, FakeStream]:
    text = prepare("A hand-made decision.", model.control_tokens, model.max_new_tokens)
    assert text is not None
    job = SpeechJob(
        text=text, language="English", speaker=model.speakers[0], max_frames=frames, sampling=SamplingChoice(seed=1)
    )
    stream = FakeStream()
    return Ticket(request_id, CV, job, stream), stream


def audio_of(stream: FakeStream) -> np.ndarray:
    return np.concatenate([item for item in stream.items if isinstance(item, np.ndarray)])


def test_a_start_becomes_frames_of_audio_and_an_end(customvoice):
    runner = BatchRunner({CV: customvoice}, EngineConfig(first_chunk_frames=1))
    speaking, heard = ticket(customvoice, "req-a", frames=4)
    outcome = runner.execute(Orders(start=[Start(speaking, 0, None)]))
    assert not outcome.failed and not outcome.ended and runner.generating() == 1
    steps = 0
    while not outcome.ended:
        outcome = runner.execute(Orders(step=True))
        assert not outcome.failed
        steps += 1
    made = heard.usage.output_frames
    assert outcome.ended == [Ended("req-a")] and 1 <= made <= 4 and steps in (made, made + 1)
    assert audio_of(heard).size == made * SAMPLES_PER_FRAME  # one segment: no cross-fade
    assert runner.generating() == 0 and not runner.can_progress()
    runner.execute(Orders(drop=["req-a"]))  # what it held goes too


def test_a_dropped_request_leaves_its_batch_and_the_other_goes_on(customvoice):
    runner = BatchRunner({CV: customvoice}, EngineConfig(first_chunk_frames=1))
    (leaving, left), (staying, _) = ticket(customvoice, "req-leaving", 50), ticket(customvoice, "req-staying", 3)
    runner.execute(Orders(start=[Start(leaving, 0, None), Start(staying, 0, None)]))
    assert runner.generating() == 2
    first = runner.execute(Orders(step=True))
    assert [stats.rows for stats in first.stats] == [2]
    runner.execute(Orders(drop=["req-leaving"]))
    assert runner.generating() == 1
    items = len(left.items)
    ended: list[Ended] = []
    while not ended:
        ended = runner.execute(Orders(step=True)).ended
    assert ended == [Ended("req-staying")] and len(left.items) == items  # nothing more for the dropped one


def test_decoding_that_fails_on_the_audio_thread_is_reported_and_told(customvoice, monkeypatch):
    reported: list[str] = []
    told = threading.Event()
    worker = AudioWorker()
    runner = BatchRunner(
        {CV: customvoice},
        EngineConfig(first_chunk_frames=1),
        worker,
        lambda request_id, exc: reported.append(request_id),
    )

    def exploding(self, frame):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(StreamingDecoder, "push", exploding)
    speaking, heard = ticket(customvoice, "req-a", frames=6)
    runner.execute(Orders(start=[Start(speaking, 0, None)]))
    for _ in range(3):  # the first chunk (one frame), then frames pushed on the audio thread
        runner.execute(Orders(step=True))
    worker.submit(object(), told.set)
    assert told.wait(30)
    worker.close()
    assert reported == ["req-a"]  # once: its later audio work is skipped
    errors = [item for item in heard.items if isinstance(item, GenerationError)]
    assert len(errors) == 1 and "decoding" in str(errors[0])
