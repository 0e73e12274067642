"""Continuous batching: one thread runs every active request of a model in one batch.

Each turn of the loop is decide → execute → update:

1. **receive** what arrived (requests, encoder tasks, wake-ups; it blocks only when nothing
   can progress), and take live turns' new text (``live_turn.py``);
2. **decide** with ``policy.py``, from plain facts (the waiting requests, free slots, queued
   encoder work): which requests leave the queue, which one encoder call runs, which join;
3. **execute** with the ``BatchRunner`` (``runner.py``): the encoder call, the joining
   rows' prefill (one batch), the requests that arrived meanwhile (they join too, their
   prefill with the step: a burst's first frames come from one step), then one step of each
   model's batch, whose frames it decodes and hands to their requests as audio (with
   ``QWEN_TTS_DECODE_THREAD``, the decoding is handed to a thread of its own,
   ``audio_worker.py``, and the next step starts at once);
4. **update** each request's state (``requests.py``) from what the runner reports: a row that
   ended starts the request's next segment or live part, or finishes it.

Failures stay with the requests they touch: a row whose logits are not finite, or whose
decoding raises, fails alone; a step that raises fails its batch, which starts afresh. If
the loop itself cannot go on (a fresh batch cannot even be made: the device is unusable),
it says why in ``failure`` and answers every request, queued or new, with EngineUnavailable.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from ...constants import ModelKind
from ..errors import EngineUnavailable, SynthesisTimeout, generation_error
from . import policy
from .admission import Admission
from .audio_worker import AudioWorker, decode_thread_wanted
from .jobs import EngineConfig, SpeechJob
from .live_turn import LiveRequest
from .policy import Decision
from .requests import FinishReason, Request, RequestState
from .runner import BatchRunner, StepObserver, StepOutcome
from .stream import END, SynthesisStream

log = logging.getLogger(__name__)
MAX_FAILED_ITERATIONS = 3  # unexplained loop failures in a row before the scheduler gives up
_WAKE = object()  # an inbox item that only wakes the loop (text arrived, a live turn was cancelled)


class EncoderTask:
    """A function to run on the scheduler thread between steps (it owns the models)."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn: Callable[[], Any] = fn
        self.future: Future = Future()

    def run(self) -> None:
        if self.future.set_running_or_notify_cancel():
            try:
                self.future.set_result(self.fn())
            except BaseException as exc:  # handed to the caller
                self.future.set_exception(exc)

    def refuse(self, exc: Exception) -> None:
        if self.future.set_running_or_notify_cancel():
            self.future.set_exception(exc)


_InboxItem = list[Request] | EncoderTask | object | None


class Scheduler:
    """``start=False`` leaves the thread unstarted: a test then drives ``iterate`` by hand."""

    def __init__(self, runner: BatchRunner, config: EngineConfig, admission: Admission, start: bool = True):
        self.runner = runner
        self.config = config
        self.admission = admission
        self._observers: list[StepObserver] = []
        self._failure: str | None = None
        self._closed = False
        self._close_received = False  # the loop has taken close()'s mark from the inbox
        self._inbox: queue.SimpleQueue[_InboxItem] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()  # arrival order
        self._tasks: deque[EncoderTask] = deque()  # encoder work (clone prompts), one between two steps
        self._active: dict[str, Request] = {}  # requests that hold a batch slot, by id
        devices = (model.tts.model.talker.device for model in runner.models.values())
        self._audio = AudioWorker() if decode_thread_wanted(config.decode_thread, devices) else None
        self._thread = threading.Thread(target=self._loop, name="qwen-tts-scheduler", daemon=True)
        if start:
            self._thread.start()

    @property
    def failure(self) -> str | None:
        """Why the scheduler cannot generate any more, or None while it can."""
        started = self._thread.ident is not None  # (a test may drive the loop by hand instead)
        if self._failure is None and not self._closed and started and not self._thread.is_alive():
            return "the scheduler thread is not running"
        return self._failure

    def add_step_observer(self, observer: StepObserver) -> Callable[[], None]:
        """Call ``observer`` after each step that made frames (on the scheduler thread);
        returns what removes it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    # --- the event loop's side ---
    def submit(self, kind: ModelKind, job: SpeechJob, stream: SynthesisStream) -> None:
        self._inbox.put([Request(kind, job, self._ordered(stream))])

    def submit_live(self, kind: ModelKind, job: SpeechJob, stream: SynthesisStream) -> None:
        """A turn whose text arrives while it is spoken (``job.live``)."""
        self._inbox.put([LiveRequest(kind, job, self._ordered(stream), self.config.first_chunk_frames)])

    def wake(self) -> None:
        """Look again at live turns (text arrived, or one was cancelled)."""
        self._inbox.put(_WAKE)

    def submit_together(self, kind: ModelKind, work: list[tuple[SpeechJob, SynthesisStream]]) -> None:
        """Requests outside admission control (the warm-up) that join the batch at one step,
        so their prefill runs batched."""
        self._inbox.put([Request(kind, job, self._ordered(stream), admitted=False) for job, stream in work])

    def _ordered(self, stream: SynthesisStream) -> SynthesisStream:
        """With an audio thread, what the scheduler emits queues behind the audio work."""
        stream.audio_worker = self._audio
        return stream

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` (encoder work: a clone prompt) on the scheduler thread, between two steps,
        at most one such call between two steps; its result comes in the future."""
        task = EncoderTask(fn)
        self._inbox.put(task)
        return task.future

    def close(self) -> None:
        self._closed = True
        self._inbox.put(None)

    @property
    def decodes_on_its_own_thread(self) -> bool:
        return self._audio is not None

    # --- what a test or the metrics may read ---
    @property
    def waiting(self) -> list[Request]:
        return list(self._waiting)

    @property
    def active(self) -> list[Request]:
        return list(self._active.values())

    def request(self, request_id: str) -> Request | None:
        return self._active.get(request_id) or next((r for r in self._waiting if r.id == request_id), None)

    # --- the scheduler thread ---
    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - the loop cannot go on: say so, answer everyone
            self._stop_serving(exc)
        finally:
            if self._audio is not None:
                self._audio.close()  # after what is queued: the last requests' audio and ends

    def _serve(self) -> None:
        failed_in_a_row = 0
        while True:
            try:
                if not self.receive():
                    return
                self.iterate()
                failed_in_a_row = 0
            except EngineUnavailable:
                raise
            except Exception:
                # Every request-level failure is handled where it happens; this is a bug's last line.
                log.exception("scheduler iteration failed")
                failed_in_a_row += 1
                if failed_in_a_row >= MAX_FAILED_ITERATIONS:
                    raise

    def receive(self, block: bool = True) -> bool:
        """Take what has arrived (waiting for it when there is nothing to do and ``block``);
        False on close (and on every call after it)."""
        if self._close_received:
            return False
        idle = block and not self._has_work()
        try:
            while True:
                item = self._inbox.get(timeout=0.5) if idle else self._inbox.get_nowait()
                if item is None:
                    self._close_received = True
                    return False
                if isinstance(item, EncoderTask):
                    self._tasks.append(item)
                elif isinstance(item, list):
                    self._waiting.extend(item)
                idle = False
        except queue.Empty:
            return True

    def iterate(self) -> Decision[Request]:
        """One turn of the loop after ``receive``: decide, execute, update."""
        if self._audio is not None:  # a first chunk being decoded has the processor to itself
            self._audio.wait_for_first_audio()
        self._take_live_text()
        for request in self._waiting:
            if request.needs_encoder:
                self.runner.look_up_prompt(request)
        decision = self._admit(encoders=True)
        # Requests that arrived while that prefill ran join before the step, so a burst's
        # first frames come from one step, not a step for the first arrival and then one for
        # the rest (which waited for it, its first chunk included); their prompts are
        # prefilled with the step (``FrameBatch``'s joining groups). A closing inbox is seen
        # at the loop's next receive.
        if decision.joining and self.receive(block=False):
            self._admit(encoders=False)
        for kind, batch in list(self.runner.batches.items()):
            if len(batch):
                self._update(self.runner.step(kind, self._active))
        return decision

    def _admit(self, encoders: bool) -> Decision[Request]:
        """Decide and execute the waiting requests' admission. ``encoders``: this turn's one
        encoder call may run (otherwise a request that needs one waits for a later turn)."""
        if encoders:
            decision = policy.decide(self._waiting, self.free_slots(), len(self._tasks))
        else:
            decision = policy.decide([r for r in self._waiting if not r.needs_encoder], self.free_slots(), 0)
        self._execute(decision)
        return decision

    def free_slots(self) -> dict[ModelKind, int]:
        """Free slots per model: a live turn between two parts keeps its own."""
        holding = (r.kind for r in self._active.values())
        return policy.free_slots(self.config.max_batch, self.runner.batches, holding)

    def _has_work(self) -> bool:
        """Whether a step or an admission can progress without anything new arriving."""
        waiting, slots = self._waiting, self.free_slots()
        return policy.has_work(waiting, slots, len(self._tasks)) or self.runner.rows_can_progress()

    def _take_live_text(self) -> None:
        """Live turns: take their new text. A waiting one learns whether it can start; a
        speaking one hands its row the text; one between parts starts its next part when it is
        ready, and ends when its text is spoken."""
        for request in self._waiting:
            if isinstance(request, LiveRequest):
                request.take_text()
                if not request.needs_encoder:
                    request.prepare_start(self.runner.models[request.kind])
        for request in self._live_active():
            with self._contained(request, "live text"):
                request.take_text()
                if request.row is not None:
                    self.runner.feed_live(request)
                elif request.stopping:
                    self._finish(request)
                else:
                    self._next_part(request)

    def _live_active(self) -> list[LiveRequest]:
        return [r for r in self._active.values() if isinstance(r, LiveRequest)]

    def _execute(self, decision: Decision[Request]) -> None:
        if decision.run_task:
            self._tasks.popleft().run()
        for request in decision.stopped + decision.empty:  # client gone, out of time, or nothing to say
            self._waiting.remove(request)
            self._finish(request)
        if decision.encode is not None:
            self._encode(decision.encode, decision.join[decision.encode.kind])
        for kind, requests in decision.join.items():
            for request in requests:
                self._waiting.remove(request)
                request.began = time.monotonic()
                request.stream.started = True
            self._start(kind, requests)

    def _encode(self, request: Request, joining: list[Request]) -> None:
        """The one encoder call of this turn: the request's clone prompt. It joins with the
        others if it can start (a live turn: once its text is ready)."""
        try:
            self.runner.encode(request)
            if isinstance(request, LiveRequest):
                request.prepare_start(self.runner.models[request.kind])
                if request.empty:  # the turn's text held nothing to speak
                    joining.remove(request)
                    self._waiting.remove(request)
                    self._finish(request)
                elif not request.ready:
                    joining.remove(request)
        except EngineUnavailable:
            raise
        except Exception as exc:
            log.exception("admitting a request failed")
            joining.remove(request)
            self._waiting.remove(request)
            self._fail(request, generation_error("reference encoding", exc))

    def _start(self, kind: ModelKind, requests: Iterable[Request]) -> None:
        """Start the current segment (or part) of each request; their prefills run as one batch."""
        requests = list(requests)
        for request in requests:
            request.move_to(RequestState.RUNNING)
            self._active[request.id] = request
        for request, exc in self.runner.prefill(kind, requests):
            self._fail(request, exc)

    def _update(self, outcome: StepOutcome) -> None:
        for request in list(self._active.values()):  # decoding failed on the audio thread
            if request.audio_error is not None:
                self._fail(request, generation_error("decoding", request.audio_error))
        if outcome.stats is not None:
            for observer in list(self._observers):
                try:
                    observer(outcome.stats)
                except Exception:  # metrics never stop generation
                    log.exception("step observer failed")
        for request, exc in outcome.failed:
            self._fail(request, exc)
        self.runner.renew()  # a batch whose step failed starts afresh (or the engine stops)
        for request, row in outcome.ended:
            if request.state is RequestState.FINISHED:
                continue
            with self._contained(request, "decoding"):
                if request.stopping:  # cancelled or out of time: nobody hears the rest
                    self._finish(request)
                elif isinstance(request, LiveRequest):
                    request.end_part(row.prompt.text_tokens)
                    request.move_to(RequestState.BETWEEN_PARTS)
                    self._next_part(request)
                elif request.end_segment():
                    self._start(request.kind, [request])
                else:
                    self._finish(request)

    @contextmanager
    def _contained(self, request: Request, stage: str) -> Iterator[None]:
        """A failure inside fails this request alone (the client is told ``stage``); one that
        stops the engine goes on up."""
        try:
            yield
        except EngineUnavailable:
            raise
        except Exception as exc:
            log.exception("%s failed for %s", stage, request.id)
            self._fail(request, generation_error(stage, exc))

    def _next_part(self, request: LiveRequest) -> None:
        """Between two parts: start the next one if it is ready, or end the turn if it is over."""
        model = self.runner.models[request.kind]
        while True:
            if request.done:
                self._finish(request)
                return
            if request.can_start(model):
                self._start(request.kind, [request])
                return
            if not request.skip_empty_part():
                return

    def _finish(self, request: Request) -> None:
        expired = request.stream.expired
        request.stream.emit(SynthesisTimeout() if expired else END)
        cancelled = request.stream.cancelled
        reason = FinishReason.TIMED_OUT if expired else FinishReason.CANCELLED if cancelled else FinishReason.DONE
        self._release(request, reason)

    def _fail(self, request: Request, exc: Exception) -> None:
        if request.state is RequestState.FINISHED:
            return
        others = self.runner.remove(request, self._active, exc)
        request.stream.emit(exc)
        self._release(request, FinishReason.FAILED)
        for other, why in others:
            self._fail(other, why)
        self.runner.renew()

    def _release(self, request: Request, reason: FinishReason) -> None:
        self._active.pop(request.id, None)
        request.move_to(RequestState.FINISHED, reason)
        if request.admitted:
            self.admission.release(None if request.began is None else time.monotonic() - request.began)

    def _stop_serving(self, exc: BaseException) -> None:
        """The loop cannot go on: record why, fail every request in the scheduler, and from now
        on answer whatever arrives with EngineUnavailable (until close)."""
        reason = (
            str(exc)
            if isinstance(exc, EngineUnavailable)
            else f"the scheduler stopped after an unexpected error ({type(exc).__name__}: {exc})"
        )
        self._failure = reason
        log.critical("%s; this process can no longer generate speech and should be restarted", reason, exc_info=exc)
        unavailable = EngineUnavailable(reason)
        pending = list(self._waiting) + [r for r in self._active.values() if r.state is not RequestState.FINISHED]
        self._waiting.clear()
        self._active.clear()
        for task in self._tasks:
            task.refuse(unavailable)
        self._tasks.clear()
        while True:
            for request in pending:
                try:
                    request.stream.emit(unavailable)
                    request.row = None
                    self._release(request, FinishReason.ENGINE_STOPPED)
                except Exception:  # noqa: BLE001 - answer the others regardless
                    log.exception("could not fail a request")
            item = self._inbox.get()
            if item is None:
                return
            pending = []
            if isinstance(item, EncoderTask):
                item.refuse(unavailable)
            elif isinstance(item, list):
                pending = item
