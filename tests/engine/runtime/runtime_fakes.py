"""Fakes and builders for driving the scheduler by hand: no model, no tensors, no server."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import numpy as np

from qwen_tts_api.constants import ModelKind
from qwen_tts_api.engine.errors import EngineUnavailable, GenerationError
from qwen_tts_api.engine.runtime.admission import Admission
from qwen_tts_api.engine.runtime.jobs import EngineConfig, ReferenceAudio, SpeechJob
from qwen_tts_api.engine.runtime.orders import Ended, Orders, Outcome, Start, StepStats
from qwen_tts_api.engine.runtime.scheduler import Scheduler
from qwen_tts_api.engine.runtime.stream import END, SynthesisStream, Usage
from qwen_tts_api.text.prepare import PreparedText, Segment

CV, BASE = ModelKind.CUSTOMVOICE, ModelKind.BASE


class FakeStream(SynthesisStream):
    """A SynthesisStream without an event loop: what it is given is kept in ``items``."""

    def __init__(self, timeout: float = 60.0):
        self.items: list[object] = []
        self._cancelled = threading.Event()
        self._on_cancel = lambda: None
        self.deadline = time.monotonic() + timeout
        self.started_at: float | None = None
        self.usage = Usage()
        self.audio_worker = None

    def emit(self, item: object) -> None:
        self.items.append(item)

    @property
    def ended(self) -> object | None:
        last = self.items[-1] if self.items else None
        return last if last is END or isinstance(last, BaseException) else None


class FakeRunner:
    """Carries out the scheduler's orders on pretend batches (``runtime.orders.Runner``):
    each row makes one frame (four samples of audio) per step and ends after its segment's
    ``max_frames``. Records what it was asked to do in ``log``."""

    def __init__(self, kinds=(CV, BASE)):
        self.kinds = list(kinds)
        self.rows: dict[ModelKind, dict[str, int]] = {kind: {} for kind in kinds}  # request id: frames left
        self.streams: dict[str, SynthesisStream] = {}
        self.log: list[tuple] = []
        self.fail_prefill: set[str] = set()  # request ids whose prompt cannot be built
        self.fail_step = False
        self.cannot_renew = False
        self._broken: set[ModelKind] = set()

    def execute(self, orders: Orders) -> Outcome:
        if self._broken and self.cannot_renew:
            raise EngineUnavailable("the device is gone")
        self._broken.clear()
        outcome = Outcome()
        for request_id in orders.drop:
            for rows in self.rows.values():
                rows.pop(request_id, None)
        if orders.encode is not None:
            self.log.append(("encode", orders.encode.request_id))
            outcome.prompts.add(orders.encode.request_id)
        starts: dict[ModelKind, list[Start]] = defaultdict(list)
        for start in orders.start:
            starts[start.ticket.kind].append(start)
        for kind, group in starts.items():
            self.log.append(("prefill", kind, [start.ticket.request_id for start in group]))
            for start in group:
                ticket = start.ticket
                if ticket.request_id in self.fail_prefill:
                    outcome.failed.append((ticket.request_id, GenerationError("prompt preparation failed")))
                    continue
                self.rows[kind][ticket.request_id] = ticket.job.text.segments[start.index].max_frames
                self.streams[ticket.request_id] = ticket.stream
        if orders.step:
            for kind, rows in self.rows.items():
                if rows:
                    self._step(kind, rows, outcome)
        return outcome

    def _step(self, kind: ModelKind, rows: dict[str, int], outcome: Outcome) -> None:
        self.log.append(("step", kind, len(rows)))
        if self.fail_step:
            outcome.failed += [(request_id, GenerationError("step failed")) for request_id in rows]
            rows.clear()
            self._broken.add(kind)
            return
        outcome.stats.append(StepStats(kind, len(rows), 0.0, 0))
        for request_id in list(rows):
            rows[request_id] -= 1
            self.streams[request_id].emit(np.ones(4, np.float32))
            if rows[request_id] == 0:
                del rows[request_id]
                outcome.ended.append(Ended(request_id))

    def can_progress(self) -> bool:
        return self.generating() > 0

    def generating(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    def wait_for_first_audio(self) -> None:
        pass

    def close(self) -> None:
        pass


def job(*frames: int, reference: bool = False) -> SpeechJob:
    """A job whose segments make that many frames each."""
    segments = tuple(Segment(f"segment {i}", n) for i, n in enumerate(frames))
    ref = ReferenceAudio(np.zeros(10, np.float32)) if reference else None
    return SpeechJob(text=PreparedText(" ".join(s.text for s in segments), segments), language="English", reference=ref)


def scheduler(max_batch: int = 2, max_queue: int = 8) -> tuple[Scheduler, FakeRunner, Admission]:
    runner = FakeRunner()
    admission = Admission(max_queue, workers=max_batch)
    config = EngineConfig(max_batch=max_batch, max_queue=max_queue)
    return Scheduler(runner, config, admission, start=False), runner, admission


def submit(sched: Scheduler, admission: Admission, kind: ModelKind, speech: SpeechJob) -> FakeStream:
    admission.admit()
    stream = FakeStream()
    sched.submit(kind, speech, stream)
    return stream


def turn(sched: Scheduler) -> None:
    assert sched.receive(block=False)
    sched.iterate()


def states(sched: Scheduler) -> dict[str, str]:
    return {r.id: r.state.value for r in sched.waiting + sched.active}
