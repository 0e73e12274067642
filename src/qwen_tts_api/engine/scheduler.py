"""Continuous batching: one thread runs every active request of a model in one batch.

Requests wait in arrival order until their model's batch has a free place
(QWEN_TTS_MAX_BATCH); then their first text segment joins the batch, and each later
segment joins as the previous one ends. Every step makes one frame for each row; frames go
to their request's streaming decoder, and audio to its stream as chunks complete.
CustomVoice and Base requests batch within their own model; the scheduler steps the
models' batches in turn.

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
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..constants import ModelKind
from ..text.budget import frame_budget
from ..text.live import PartSplitter
from ..voices.prompt import ClonePrompt
from .admission import Admission, SynthesisTimeout
from .batching import BatchRow, FrameBatch
from .clone import PromptCache
from .decoding import DecoderContext, StreamingDecoder
from .errors import EngineUnavailable, GenerationError
from .jobs import EngineConfig, SpeechJob
from .joining import SegmentJoiner
from .live import PartTokens
from .loading import LoadedModel
from .prompt import build_live_prompt, build_prompt, live_start_tokens, text_embeddings
from .sampling import RowSampling, SamplingParams
from .stream import END, PartEnded, PartStarted, SynthesisStream

log = logging.getLogger(__name__)
MAX_FAILED_ITERATIONS = 3  # unexplained loop failures in a row before the scheduler gives up
_WAKE = object()  # an inbox item that only wakes the loop (text arrived, a live turn was cancelled)


class _Request:
    def __init__(self, kind: ModelKind, job: SpeechJob, stream: SynthesisStream, admitted: bool = True):
        self.kind, self.job, self.stream = kind, job, stream
        self.admitted = admitted  # holds a place in admission control (the warm-up does not)
        self.segments = job.text.segments
        self.index = 0
        self.joiner = SegmentJoiner(len(self.segments))
        self.clone_prompt: ClonePrompt | None = job.voice_prompt  # a saved voice's, or computed on admission
        self.decoder: StreamingDecoder | None = None
        self.decoder_context: DecoderContext | None = None  # in-context cloning: the reference, decoded once
        self.row: BatchRow | None = None
        self.began: float | None = None
        self._sampling: RowSampling | None = None

    def sampling(self, batch: FrameBatch) -> RowSampling:
        """The request's sampling, made once: its generator runs on across its segments."""
        if self._sampling is None:
            choice = self.job.sampling
            params = batch.params.overridden(choice.temperature, choice.top_p, choice.top_k, choice.repetition_penalty)
            self._sampling = RowSampling.seeded(params, choice.seed, batch.talker.device)
        return self._sampling

    def emit_audio(self, audio) -> None:
        if audio is not None and audio.size:
            self.stream.emit(audio)


class _LiveRequest(_Request):
    """A voice agent's turn: text arrives while it is spoken (``job.live``). Its parts
    (``text/live.py``) are generated one after another like segments, each starting once it
    holds a first clause and reading what arrives while it speaks."""

    def __init__(self, kind: ModelKind, job: SpeechJob, stream: SynthesisStream, first_chunk: int):
        super().__init__(kind, job, stream)
        assert job.live is not None
        self._first_chunk_default = first_chunk
        self.live = job.live
        self.splitter = PartSplitter()
        self.joiner = SegmentJoiner(None)
        self.tokens: PartTokens | None = None  # the current part's final token ids
        self.start_tokens: int | None = None  # ids a part needs before it can start (cloning)
        self.frame_limit = 0

    @property
    def first_chunk(self) -> int:
        return self.job.first_chunk_frames or self._first_chunk_default

    def take_text(self) -> None:
        text, done = self.live.take()
        self.splitter.feed(text)
        if done:
            self.splitter.finish()

    @property
    def part(self):
        parts = self.splitter.parts
        return parts[self.index] if self.index < len(parts) else None

    @property
    def done(self) -> bool:
        return self.splitter.finished and self.index >= len(self.splitter.parts)

    def sync_tokens(self, model: LoadedModel) -> list[int]:
        """The current part's ids that became final since the last call."""
        part = self.part
        if part is None:
            return []
        if self.tokens is None:
            self.tokens = PartTokens(model.tts, model.control_tokens)
        return self.tokens.update(part.text, part.closed)

    @property
    def may_start(self) -> bool:
        """Whether ``can_start`` may hold now (cheap: no tokenizing; new text wakes the loop)."""
        part = self.part
        if part is None or not part.ready:
            return self.done
        if self.tokens is None or self.start_tokens is None:
            return True
        return len(self.tokens.ids) >= self.start_tokens or part.closed

    def can_start(self, model: LoadedModel) -> bool:
        """Whether the current part has what it needs to start speaking."""
        part = self.part
        if part is None or not part.ready:
            return False
        self.sync_tokens(model)
        if self.start_tokens is None:
            self.start_tokens = live_start_tokens(model.tts, self.clone_prompt)
        ids = len(self.tokens.ids)
        return ids >= self.start_tokens or (part.closed and ids > 0)

    def skip_empty_part(self) -> bool:
        """A closed part with nothing to speak (only control tokens, say) is passed over."""
        part = self.part
        if part is not None and part.closed and self.tokens is not None and not self.tokens.ids:
            self.index += 1
            self.tokens = None
            return True
        return False


class _Task:
    """A function to run on the scheduler thread between steps (it owns the models)."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn, self.future = fn, Future()

    def run(self) -> None:
        if self.future.set_running_or_notify_cancel():
            try:
                self.future.set_result(self.fn())
            except BaseException as exc:  # handed to the caller
                self.future.set_exception(exc)


class Scheduler:
    def __init__(self, models: dict[str, LoadedModel], config: EngineConfig, admission: Admission):
        self.models = models
        self.config = config
        self.admission = admission
        self.prompts = PromptCache(config.prompt_cache_size)
        # Metrics hook, after each step: model kind, rows, seconds, cache positions.
        self.on_step: Callable[[str, int, float, int], None] = lambda kind, rows, seconds, cache: None
        self.batches = {kind: self._new_batch(kind) for kind in models}
        self._failure: str | None = None
        self._closed = False
        self._inbox: queue.SimpleQueue[list[_Request] | _Task | None] = queue.SimpleQueue()
        self._waiting: deque[_Request] = deque()
        self._tasks: deque[_Task] = deque()  # encoder work (clone prompts), one between two steps
        self._owners: dict[int, _Request] = {}
        self._live: list[_LiveRequest] = []  # live turns that have started (they keep their batch place)
        self._thread = threading.Thread(target=self._loop, name="qwen-tts-scheduler", daemon=True)
        self._thread.start()

    def _new_batch(self, kind: ModelKind) -> FrameBatch:
        tts = self.models[kind].tts
        return FrameBatch(tts, SamplingParams.from_generate_config(tts.generate_defaults))

    @property
    def failure(self) -> str | None:
        """Why the scheduler cannot generate any more, or None while it can."""
        if self._failure is None and not self._closed and not self._thread.is_alive():
            return "the scheduler thread is not running"
        return self._failure

    def submit(self, kind: ModelKind, job: SpeechJob, stream: SynthesisStream) -> None:
        self._inbox.put([_Request(kind, job, stream)])

    def submit_live(self, kind: ModelKind, job: SpeechJob, stream: SynthesisStream) -> None:
        """A turn whose text arrives while it is spoken (``job.live``)."""
        self._inbox.put([_LiveRequest(kind, job, stream, self.config.first_chunk_frames)])

    def wake(self) -> None:
        """Look again at live turns (text arrived, or one was cancelled)."""
        self._inbox.put(_WAKE)

    def submit_together(self, kind: ModelKind, work: list[tuple[SpeechJob, SynthesisStream]]) -> None:
        """Requests outside admission control (the warm-up) that join the batch at one step,
        so their prefill runs batched."""
        self._inbox.put([_Request(kind, job, stream, admitted=False) for job, stream in work])

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` (encoder work: a clone prompt) on the scheduler thread, between two steps,
        at most one such call between two steps; its result comes in the future."""
        task = _Task(fn)
        self._inbox.put(task)
        return task.future

    def clone_prompt(self, kind: ModelKind, waveform, transcript: str | None) -> ClonePrompt:
        """On the scheduler thread: a clone prompt for this reference, from the cache when it can."""
        return self.prompts.get_or_compute(self.models[kind].tts, waveform, transcript)

    def close(self) -> None:
        self._closed = True
        self._inbox.put(None)

    # --- the scheduler thread ---
    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - the loop cannot go on: say so, answer everyone
            self._stop_serving(exc)

    def _serve(self) -> None:
        failed_in_a_row = 0
        while True:
            try:
                if not self._receive():
                    return
                # A step of the batch in flight waits for at most one encoder call: one
                # queued task or one inline reference's clone prompt, not both, not several.
                encoder_free = True
                if self._tasks:
                    self._tasks.popleft().run()
                    encoder_free = False
                self._advance_live()
                self._admit_waiting(encoder_free)
                for kind in list(self.batches):
                    if len(self.batches[kind]):
                        self._step(kind, self.batches[kind])
                failed_in_a_row = 0
            except EngineUnavailable:
                raise
            except Exception:
                # Every request-level failure is handled where it happens; this is a bug's last line.
                log.exception("scheduler iteration failed")
                failed_in_a_row += 1
                if failed_in_a_row >= MAX_FAILED_ITERATIONS:
                    raise

    def _receive(self) -> bool:
        """Take what has arrived (waiting for it when there is nothing to do); False on close."""
        idle = not self._has_work()
        try:
            while True:
                item = self._inbox.get(timeout=0.5) if idle else self._inbox.get_nowait()
                if item is None:
                    return False
                if item is _WAKE:
                    idle = False
                    continue
                if isinstance(item, _Task):
                    self._tasks.append(item)
                else:
                    self._waiting.extend(item)
                idle = False
        except queue.Empty:
            return True

    def _places(self, kind: ModelKind) -> int:
        """Free places in ``kind``'s batch (a live turn between two parts keeps its place)."""
        between_parts = sum(1 for r in self._live if r.kind == kind and r.row is None)
        return self.config.max_batch - len(self.batches[kind]) - between_parts

    def _has_work(self) -> bool:
        """Whether a step or an admission can make progress without anything new arriving
        (rows and turns waiting for text cannot: its arrival wakes the loop)."""
        if self._tasks:
            return True
        if any(self._places(r.kind) > 0 and (not isinstance(r, _LiveRequest) or r.may_start) for r in self._waiting):
            return True
        return any(
            r.error is not None or r.prompt.text_available(r.frames_made) or r.should_stop()
            for batch in self.batches.values()
            for r in batch.rows
        )

    def _advance_live(self) -> None:
        """Live turns in flight: hand new text to their generating part, start their next
        part when it is ready, and end them when their text is spoken."""
        for request in list(self._waiting):
            if isinstance(request, _LiveRequest):
                request.take_text()
        for request in list(self._live):
            try:
                request.take_text()
                if request.row is not None:
                    self._feed_row(request, self.models[request.kind])
                elif request.stream.should_stop():
                    self._finish(request)
                else:
                    self._next_part(request)
            except Exception as exc:
                log.exception("advancing a live turn failed")
                self._fail(request, _generation_error("live text", exc))

    def _next_part(self, request: _LiveRequest) -> None:
        """Between two parts: start the next one if it is ready, or end the turn if it is over."""
        model = self.models[request.kind]
        while True:
            if request.done:
                self._finish(request)
                return
            if request.can_start(model):
                self._join(request.kind, [request])
                return
            if not request.skip_empty_part():
                return

    def _feed_row(self, request: _LiveRequest, model: LoadedModel) -> None:
        """Give the generating part's row the tokens that became final, and its end."""
        row, part = request.row, request.part
        fresh = request.sync_tokens(model)
        ending = part.closed and not row.prompt.text_final
        if fresh:
            row.prompt.extend(text_embeddings(model.tts, fresh))
        if ending:
            row.prompt.finish()
        if fresh or ending:  # the budget grows with the text (not recounted on every loop)
            row.max_frames = frame_budget(part.text, request.frame_limit)
        self._flush_if_waiting(request)

    def _flush_if_waiting(self, request: _LiveRequest) -> None:
        """A part waiting for text: let the listener hear what is made, in small chunks after."""
        row = request.row
        if row is not None and not row.prompt.text_available(row.frames_made) and request.decoder.pending:
            request.emit_audio(request.joiner.feed(request.index, request.decoder.flush()))
            request.decoder.next_chunk = request.first_chunk

    def _admit_waiting(self, encoder_free: bool) -> None:
        """Move waiting requests into their batch while it has places. An inline reference
        whose clone prompt is not cached needs the encoders: one such request per call (when
        ``encoder_free``); the others keep their place in the queue until a later step."""
        joining: dict[ModelKind, list[_Request]] = {}
        for request in list(self._waiting):
            try:
                if request.stream.should_stop():  # client gone or deadline passed while queued
                    self._waiting.remove(request)
                    self._finish(request)
                    continue
                if self._places(request.kind) - len(joining.get(request.kind, [])) <= 0:
                    continue
                reference = request.job.reference
                if request.clone_prompt is None and reference is not None:
                    request.clone_prompt = self.prompts.cached(reference.waveform, reference.transcript)
                    if request.clone_prompt is None:
                        if not encoder_free:
                            continue
                        encoder_free = False
                        tts = self.models[request.kind].tts
                        request.clone_prompt = self.prompts.compute(tts, reference.waveform, reference.transcript)
                if isinstance(request, _LiveRequest):
                    model = self.models[request.kind]
                    while not request.can_start(model) and request.skip_empty_part():
                        pass
                    if request.done:  # the turn's text held nothing to speak
                        self._waiting.remove(request)
                        self._finish(request)
                        continue
                    if not request.can_start(model):
                        continue
                    self._live.append(request)
                self._waiting.remove(request)
                request.began = time.monotonic()
                request.stream.started = True
                joining.setdefault(request.kind, []).append(request)
            except Exception as exc:
                log.exception("admitting a request failed")
                self._admission_failed(request, _generation_error("reference encoding", exc))
        for kind, requests in joining.items():
            self._join(kind, requests)

    def _admission_failed(self, request: _Request, exc: Exception) -> None:
        if request in self._waiting:
            self._waiting.remove(request)
        self._fail(request, exc)

    def _join(self, kind: ModelKind, requests: list[_Request]) -> None:
        """Start the current segment of each request; their prefills run as one batch."""
        entries, ready = [], []
        for request in requests:
            try:
                entries.append(self._segment_entry(request))
                ready.append(request)
            except Exception as exc:
                log.exception("preparing a segment failed")
                self._fail(request, _generation_error("prompt preparation", exc))
        if not ready:
            return
        try:
            rows = self.batches[kind].add_many(entries)
        except Exception as exc:
            log.exception("prefill failed")
            for request in ready:
                self._fail(request, _generation_error("prefill", exc))
            return
        for request, row in zip(ready, rows):
            request.row = row
            self._owners[id(row)] = request

    def _segment_entry(self, request: _Request):
        """The prompt of the request's current segment, and a fresh decoder for it."""
        if isinstance(request, _LiveRequest):
            return self._part_entry(request)
        model = self.models[request.kind]
        job, segment = request.job, request.segments[request.index]
        prompt = build_prompt(
            model.tts,
            segment.text,
            job.language,
            speaker=job.speaker,
            instructions=job.instructions,
            clone_prompt=request.clone_prompt,
        )
        request.stream.usage.input_tokens += prompt.text_tokens
        if prompt.ref_codes is not None and request.decoder_context is None:
            request.decoder_context = DecoderContext.prime(model.tts, prompt.ref_codes)
        cfg = self.config
        request.decoder = StreamingDecoder(
            model.tts,
            # Only the very first chunk of a request is small: it sets the time to first audio.
            first_chunk=cfg.first_chunk_frames if request.index == 0 else cfg.max_chunk_frames,
            max_chunk=cfg.max_chunk_frames,
            context=request.decoder_context,
        )
        return prompt, segment.max_frames, request.stream.should_stop, request.sampling(self.batches[request.kind])

    def _part_entry(self, request: _LiveRequest):
        """The prompt of a live turn's current part from the ids final so far (more follow)."""
        model = self.models[request.kind]
        job, part, tokens = request.job, request.part, request.tokens
        assert part is not None and tokens is not None
        request.frame_limit = min(model.max_new_tokens, job.max_frames or model.max_new_tokens)
        prompt = build_live_prompt(
            model.tts,
            list(tokens.ids),
            job.language,
            speaker=job.speaker,
            instructions=job.instructions,
            clone_prompt=request.clone_prompt,
            final=part.closed,
        )
        if prompt.ref_codes is not None and request.decoder_context is None:
            request.decoder_context = DecoderContext.prime(model.tts, prompt.ref_codes)
        request.decoder = StreamingDecoder(
            model.tts,
            first_chunk=request.first_chunk,
            max_chunk=self.config.max_chunk_frames,
            context=request.decoder_context,
        )
        request.stream.emit(PartStarted(request.index, part.text))
        budget = frame_budget(part.text, request.frame_limit)
        return prompt, budget, request.stream.should_stop, request.sampling(self.batches[request.kind])

    def _end_part(self, request: _LiveRequest, row: BatchRow) -> None:
        """A live part's generation ended: its last audio, then the next part or the end."""
        part = request.part
        request.stream.usage.input_tokens += row.prompt.text_tokens
        request.emit_audio(request.joiner.end_segment(request.index, request.decoder.flush()))
        if not part.closed:  # the model ended before its text did: what follows is a new part
            request.splitter.close_current()
        request.stream.emit(PartEnded(request.index, part.text))
        request.index += 1
        request.tokens = None
        self._next_part(request)

    def _step(self, kind: ModelKind, batch: FrameBatch) -> None:
        started = time.perf_counter()
        try:
            made, finished = batch.step()
        except Exception as exc:  # the whole batch is unusable: fail its requests, start afresh
            log.exception("batch step failed")
            self._reset_batch(kind, _generation_error("a generation step", exc))
            return
        if made:
            try:
                self.on_step(kind, len(made), time.perf_counter() - started, batch.cache_length)
            except Exception:  # metrics never stop generation
                log.exception("step hook failed")
        for row, codes in made:
            request = self._owners.get(id(row))
            if request is None:  # failed earlier in this step
                continue
            try:
                audio = request.decoder.push(codes)
                if audio is not None:
                    request.emit_audio(request.joiner.feed(request.index, audio))
            except Exception as exc:
                log.exception("decoding failed")
                self._fail(request, _generation_error("decoding", exc))
        for request in list(self._live):
            if request.kind == kind and request.row is not None:
                try:
                    self._flush_if_waiting(request)
                except Exception as exc:
                    log.exception("decoding failed")
                    self._fail(request, _generation_error("decoding", exc))
        for row in finished:
            request = self._owners.pop(id(row), None)
            if request is None:  # failed above
                continue
            request.row = None
            request.stream.usage.output_frames += row.frames_made
            if row.error is not None:
                log.error("request failed: %s", row.error)
                self._fail(request, row.error)
                continue
            try:
                if request.stream.should_stop():  # cancelled or out of time: nobody hears the rest
                    self._finish(request)
                    continue
                if isinstance(request, _LiveRequest):
                    self._end_part(request, row)
                    continue
                request.emit_audio(request.joiner.end_segment(request.index, request.decoder.flush()))
                if request.index + 1 < len(request.segments):
                    request.index += 1
                    self._join(request.kind, [request])
                else:
                    self._finish(request)
            except Exception as exc:
                log.exception("finishing a segment failed")
                self._fail(request, _generation_error("decoding", exc))

    def _reset_batch(self, kind: ModelKind, exc: Exception) -> None:
        """Fail every request in ``kind``'s batch and start an empty one. If not even that
        works (the device is gone), the loop cannot go on."""
        batch = self.batches[kind]
        for row in list(batch.rows):
            request = self._owners.pop(id(row), None)
            if request is not None:
                request.row = None
                self._fail(request, exc)
        try:
            self.batches[kind] = self._new_batch(kind)
        except Exception as fatal:
            raise EngineUnavailable(
                f"the {kind} model cannot start a new batch after a failed step ({type(fatal).__name__}: {fatal})"
            ) from fatal

    def _finish(self, request: _Request) -> None:
        request.stream.emit(SynthesisTimeout() if request.stream.expired else END)
        self._release(request)

    def _forget_live(self, request: _Request) -> None:
        if request in self._live:
            self._live.remove(request)

    def _fail(self, request: _Request, exc: Exception) -> None:
        if request.row is not None:
            row, request.row = request.row, None
            self._owners.pop(id(row), None)
            try:
                self.batches[request.kind].remove(row)
            except Exception:  # the batch is in an unknown state: the others cannot trust it either
                log.exception("removing a failed row failed")
                self._reset_batch(request.kind, exc)
        request.stream.emit(exc)
        self._release(request)

    def _release(self, request: _Request) -> None:
        self._forget_live(request)
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
        pending = list(self._waiting) + list(self._owners.values())
        pending += [r for r in self._live if r not in pending]
        self._waiting.clear()
        self._owners.clear()
        self._live.clear()
        for task in self._tasks:
            if task.future.set_running_or_notify_cancel():
                task.future.set_exception(unavailable)
        self._tasks.clear()
        while True:
            for request in pending:
                try:
                    request.stream.emit(unavailable)
                    self._release(request)
                except Exception:  # noqa: BLE001 - answer the others regardless
                    log.exception("could not fail a request")
            item = self._inbox.get()
            if item is None:
                return
            if item is _WAKE:
                pending = []
                continue
            if isinstance(item, _Task):
                if item.future.set_running_or_notify_cancel():
                    item.future.set_exception(unavailable)
                pending = []
            else:
                pending = item


def _generation_error(stage: str, exc: BaseException) -> GenerationError:
    """What the client is told (the details go to the log)."""
    if isinstance(exc, GenerationError):
        return exc
    error = GenerationError(f"speech generation failed during {stage} ({type(exc).__name__})")
    error.__cause__ = exc
    return error
