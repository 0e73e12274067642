"""Continuous batching: one thread runs every active request of a model in one batch.

Each turn of the loop is decide → execute → update:

1. **receive** what arrived (``inbox.py``: requests, model calls, wake-ups, decoding that
   failed on the audio thread; it blocks only when nothing can progress), and take live
   turns' new text (``live_turn.py``);
2. **decide** with ``policy.py``, from plain facts (the waiting requests, free slots, queued
   model calls): which requests leave the queue, which one encoder call runs, which join;
3. **execute**: the decision, with what the scheduler adds (requests that are over, live
   text, a step), goes to the runner as ``Orders`` and comes back as an ``Outcome``
   (``orders.py``). The runner (``runner.py``) holds every tensor; requests that arrived
   while a prefill ran join before the step, so a burst's first frames come from one step;
4. **update** each request's state (``requests.py``) from the outcome, and only here: a
   row that ended starts the request's next segment or live part, or finishes it.

Failures stay with the requests they touch (the runner reports them, their rows already
gone). If the loop itself cannot go on (a fresh batch cannot even be made: the device is
unusable), it says why in ``failure`` and answers every request, queued or new, with
EngineUnavailable. This module imports no torch: an import-linter contract keeps it so.
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
from ..errors import EngineUnavailable, GenerationError, SynthesisTimeout, generation_error
from . import policy
from .admission import Admission
from .inbox import AudioFailed, Close, InboxItem, ModelCall, Submit, Wake
from .jobs import EngineConfig, SpeechJob
from .live_turn import LiveRequest
from .orders import Orders, Outcome, PartCount, Runner, Start, StepObserver
from .policy import Decision
from .requests import FinishReason, Request, RequestState
from .stream import END, PartEnded, SynthesisStream

log = logging.getLogger(__name__)
MAX_FAILED_ITERATIONS = 3  # unexplained loop failures in a row before the scheduler gives up
SPEAKING = frozenset({RequestState.RUNNING, RequestState.WAITING_FOR_TEXT})  # states with a row


class Scheduler:
    """``start=False`` leaves the thread unstarted: a test then drives ``iterate`` by hand."""

    def __init__(self, runner: Runner, config: EngineConfig, admission: Admission, start: bool = True):
        self.runner = runner
        self.config = config
        self.admission = admission
        self._observers: list[StepObserver] = []
        self._failure: str | None = None
        self._closed = False
        self._close_received = False  # the loop has taken close()'s mark from the inbox
        self._inbox: queue.SimpleQueue[InboxItem] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()  # arrival order
        self._calls: deque[ModelCall] = deque()  # model calls (clone prompts), one between two steps
        self._audio_failures: list[AudioFailed] = []  # decoding that failed on the audio thread
        self._active: dict[str, Request] = {}  # requests that hold a batch slot, by id
        self._over: list[str] = []  # finished requests the runner has not dropped yet
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
        self._inbox.put(Submit([Request(kind, job, stream)]))

    def submit_live(self, kind: ModelKind, job: SpeechJob, stream: SynthesisStream) -> None:
        """A turn whose text arrives while it is spoken (``job.live``)."""
        self._inbox.put(Submit([LiveRequest(kind, job, stream)]))

    def wake(self) -> None:
        """Look again at live turns (text arrived, or one was cancelled)."""
        self._inbox.put(Wake())

    def submit_together(self, kind: ModelKind, work: list[tuple[SpeechJob, SynthesisStream]]) -> None:
        """Requests outside admission control (the warm-up) that join the batch at one step,
        so their prefill runs batched."""
        self._inbox.put(Submit([Request(kind, job, stream, admitted=False) for job, stream in work]))

    def audio_failed(self, request_id: str, exc: Exception) -> None:
        """A request's decoding failed on the audio thread: it fails at the loop's next turn."""
        self._inbox.put(AudioFailed(request_id, exc))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` (model work: a clone prompt) on the scheduler thread, between two steps,
        at most one such call between two steps; its result comes in the future."""
        call = ModelCall(fn)
        self._inbox.put(call)
        return call.future

    def close(self) -> None:
        self._closed = True
        self._inbox.put(Close())

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
            self.runner.close()

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
                if isinstance(item, Close):
                    self._close_received = True
                    return False
                if isinstance(item, ModelCall):
                    self._calls.append(item)
                elif isinstance(item, Submit):
                    self._waiting.extend(item.requests)
                elif isinstance(item, AudioFailed):
                    self._audio_failures.append(item)
                idle = False
        except queue.Empty:
            return True

    def iterate(self) -> Decision[Request]:
        """One turn of the loop after ``receive``: decide, execute, update."""
        self.runner.wait_for_first_audio()  # a first chunk being decoded has the processor to itself
        failures, self._audio_failures = self._audio_failures, []
        for failure in failures:  # its row leaves at the next execute
            if (request := self.request(failure.request_id)) is not None:
                self._fail(request, generation_error("decoding", failure.error))
        self._take_live_text()
        if looking := [r.ticket for r in self._waiting if r.needs_encoder]:
            self._execute(Orders(look_up=looking))
        decision = self._join_waiting(encoders=True)
        # Requests that arrived while that prefill ran join before the step, so a burst's
        # first frames come from one step, not a step for the first arrival and then one for
        # the rest (which waited for it, its first chunk included); their prompts are
        # prefilled with the step (``FrameBatch``'s joining groups). A closing inbox is seen
        # at the loop's next receive.
        if decision.joining and self.receive(block=False):
            self._join_waiting(encoders=False)
        if self.runner.generating():
            self._execute(Orders(step=True))
        if self._over:  # what finished requests held goes now, not when the next one comes
            self._execute(Orders())
        return decision

    def _execute(self, orders: Orders) -> Outcome:
        """Orders to the runner (with the requests that are over since the last ones), and
        the update from its outcome."""
        orders.drop, self._over = self._over + orders.drop, []
        outcome = self.runner.execute(orders)
        self._update(outcome)
        return outcome

    def _join_waiting(self, encoders: bool) -> Decision[Request]:
        """Decide and carry out the waiting requests' admission. ``encoders``: this turn's one
        encoder call may run (otherwise a request that needs one waits for a later turn)."""
        if encoders:
            decision = policy.decide(self._waiting, self.free_slots(), len(self._calls))
        else:
            decision = policy.decide([r for r in self._waiting if not r.needs_encoder], self.free_slots(), 0)
        if decision.run_task:
            self._calls.popleft().run()
        for request in decision.stopped + decision.empty:  # client gone, out of time, or nothing to say
            self._finish(request)
        if decision.encode is not None:
            self._encode(decision.encode, decision.join[decision.encode.kind])
        for requests in decision.join.values():
            for request in requests:
                self._waiting.remove(request)
                request.stream.started_at = time.monotonic()
            self._start(requests)
        return decision

    def free_slots(self) -> dict[ModelKind, int]:
        """Free slots per model: a request holds one from the moment it starts until it
        finishes (a live turn between two parts keeps its own)."""
        holding = (r.kind for r in self._active.values() if r.holds_slot)
        return policy.free_slots(self.config.max_batch, self.runner.kinds, holding)

    def _has_work(self) -> bool:
        """Whether a step or an admission can progress without anything new arriving."""
        waiting, slots = self._waiting, self.free_slots()
        return policy.has_work(waiting, slots, len(self._calls)) or self.runner.can_progress()

    def _count(self, request: LiveRequest) -> PartCount:
        """The runner's count of a live part's tokens (raises if counting failed it)."""
        count = self._execute(Orders(count=[(request.ticket, request.live_part)])).counts.get(request.id)
        if count is None:
            raise GenerationError("counting the turn's tokens failed")
        return count

    def _take_live_text(self) -> None:
        """Live turns: take their new text. A waiting one learns whether it can start; a
        speaking one hands its row the text; one between parts starts its next part when it is
        ready, and ends when its text is spoken."""
        for request in list(self._waiting):
            if isinstance(request, LiveRequest):
                with self._contained(request, "live text"):
                    request.take_text()
                    if not request.needs_encoder:
                        request.prepare_start(self._count)
        feeding = []
        for request in self._live_active():
            with self._contained(request, "live text"):
                request.take_text()
                if request.state in SPEAKING:
                    feeding.append((request.id, request.live_part))
                elif request.stopping:
                    self._finish(request)
                else:
                    self._next_part(request)
        if feeding:
            self._execute(Orders(feed=feeding))

    def _live_active(self) -> list[LiveRequest]:
        return [r for r in self._active.values() if isinstance(r, LiveRequest)]

    def _encode(self, request: Request, joining: list[Request]) -> None:
        """The one encoder call of this turn: the request's clone prompt. It joins with the
        others if it can start (a live turn: once its text is ready)."""
        self._execute(Orders(encode=request.ticket))
        if isinstance(request, LiveRequest) and request.state is not RequestState.FINISHED:
            with self._contained(request, "live text"):
                request.prepare_start(self._count)
                if request.empty:  # the turn's text held nothing to speak
                    self._finish(request)
        if request.state is RequestState.FINISHED or not request.ready:
            joining.remove(request)

    def _start(self, requests: Iterable[Request]) -> None:
        """Start the current segment (or part) of each request; their prefills run as one batch."""
        starts = []
        for request in requests:
            request.move_to(RequestState.RUNNING)
            self._active[request.id] = request
            part = request.live_part if isinstance(request, LiveRequest) else None
            starts.append(Start(request.ticket, request.index, part))
        if starts:
            self._execute(Orders(start=starts))

    def _update(self, outcome: Outcome) -> None:
        """Each request's state from what the runner did."""
        for request_id in outcome.prompts:
            if (request := self.request(request_id)) is not None:
                request.has_prompt = True
        for stats in outcome.stats:
            for observer in list(self._observers):
                try:
                    observer(stats)
                except Exception:  # metrics never stop generation
                    log.exception("step observer failed")
        for request_id, exc in outcome.failed:
            if (request := self.request(request_id)) is not None:
                self._fail(request, exc)
        for request_id, waiting in outcome.waiting_for_text.items():
            request = self._active.get(request_id)
            state = RequestState.WAITING_FOR_TEXT if waiting else RequestState.RUNNING
            if request is not None and request.state in SPEAKING and request.state is not state:
                request.move_to(state)
        for ended in outcome.ended:
            request = self._active.get(ended.request_id)
            if request is not None and request.state is not RequestState.FINISHED:
                with self._contained(request, "decoding"):
                    self._row_ended(request)

    def _row_ended(self, request: Request) -> None:
        """Its row ended and its audio is out: the next segment or part, or its end."""
        if request.stopping:  # cancelled or out of time: nobody hears the rest
            self._finish(request)
        elif isinstance(request, LiveRequest):
            index, text, typed = request.end_part()
            request.stream.emit(PartEnded(index, text, typed=typed))
            request.move_to(RequestState.BETWEEN_PARTS)
            self._next_part(request)
        else:
            if request.job.announce_parts:
                request.stream.emit(PartEnded(request.index, request.job.text.segments[request.index].text))
            if request.more_segments:
                request.index += 1
                self._start([request])
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
            self._fail(request, exc if isinstance(exc, GenerationError) else generation_error(stage, exc))

    def _next_part(self, request: LiveRequest) -> None:
        """Between two parts: start the next one if it is ready, or end the turn if it is over."""
        while request.state is not RequestState.FINISHED:
            if request.done:
                self._finish(request)
                return
            if request.can_start(self._count):
                self._start([request])
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
        request.stream.emit(exc)
        self._release(request, FinishReason.FAILED)

    def _release(self, request: Request, reason: FinishReason) -> None:
        """It is over: out of the queue or its slot, and the runner drops what it held."""
        self._active.pop(request.id, None)
        if request in self._waiting:
            self._waiting.remove(request)
        request.move_to(RequestState.FINISHED, reason)
        self._over.append(request.id)
        if request.admitted:
            started = request.stream.started_at
            self.admission.release(None if started is None else time.monotonic() - started)

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
        for call in self._calls:
            call.refuse(unavailable)
        self._calls.clear()
        while True:
            for request in pending:
                try:
                    request.stream.emit(unavailable)
                    self._release(request, FinishReason.ENGINE_STOPPED)
                except Exception:  # noqa: BLE001 - answer the others regardless
                    log.exception("could not fail a request")
            item = self._inbox.get()
            if isinstance(item, Close):
                return
            pending = []
            if isinstance(item, ModelCall):
                item.refuse(unavailable)
            elif isinstance(item, Submit):
                pending = item.requests
