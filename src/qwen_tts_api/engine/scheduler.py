"""Continuous batching: one thread runs every active request of a model in one batch.

Requests wait in arrival order until their model's batch has a free place
(QWEN_TTS_MAX_BATCH); then their first text segment joins the batch, and each later
segment joins as the previous one ends. Every step makes one frame for each row; frames go
to their request's streaming decoder, and audio to its stream as chunks complete.
CustomVoice and Base requests batch within their own model; the scheduler steps the
models' batches in turn.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..text.budget import frame_budget
from ..text.segment import split_text
from .admission import Admission, SynthesisTimeout
from .batching import BatchRow, FrameBatch
from .clone import ClonePrompt, PromptCache
from .decoding import StreamingDecoder
from .joining import SegmentJoiner
from .loading import LoadedModel
from .prompt import build_prompt
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .synthesis import EngineConfig, SpeechJob, SynthesisStream

log = logging.getLogger(__name__)
END = object()  # the last item of a stream that finished normally


class _Request:
    def __init__(self, kind: str, job: "SpeechJob", stream: "SynthesisStream"):
        self.kind, self.job, self.stream = kind, job, stream
        self.segments = split_text(job.text) or [job.text]
        self.index = 0
        self.joiner = SegmentJoiner(len(self.segments))
        self.clone_prompt: ClonePrompt | None = job.voice_prompt  # a saved voice's, or computed on admission
        self.decoder: StreamingDecoder | None = None
        self.row: BatchRow | None = None
        self.began: float | None = None

    def emit_audio(self, audio) -> None:
        if audio is not None and audio.size:
            self.stream.emit(audio)


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
    def __init__(self, models: dict[str, LoadedModel], config: "EngineConfig", admission: Admission):
        self.models = models
        self.config = config
        self.admission = admission
        self.prompts = PromptCache(config.prompt_cache_size)
        self.on_step: Callable[[str, int], None] = lambda kind, rows: None  # metrics hook: batch size per step
        self.batches = {kind: self._new_batch(kind) for kind in models}
        self._inbox: queue.SimpleQueue[_Request | _Task | None] = queue.SimpleQueue()
        self._waiting: deque[_Request] = deque()
        self._owners: dict[int, _Request] = {}
        self._thread = threading.Thread(target=self._loop, name="qwen-tts-scheduler", daemon=True)
        self._thread.start()

    def _new_batch(self, kind: str) -> FrameBatch:
        tts = self.models[kind].tts
        return FrameBatch(tts, SamplingParams.from_generate_config(tts.generate_defaults))

    def submit(self, kind: str, job: "SpeechJob", stream: "SynthesisStream") -> None:
        self._inbox.put(_Request(kind, job, stream))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the scheduler thread, between two steps; its result comes in the future."""
        task = _Task(fn)
        self._inbox.put(task)
        return task.future

    def clone_prompt(self, kind: str, waveform, transcript: str | None) -> ClonePrompt:
        """On the scheduler thread: a clone prompt for this reference, from the cache when it can."""
        return self.prompts.get_or_compute(self.models[kind].tts, waveform, transcript)

    def close(self) -> None:
        self._inbox.put(None)

    # --- the scheduler thread ---
    def _loop(self) -> None:
        while True:
            idle = not self._waiting and not any(len(b) for b in self.batches.values())
            try:
                while True:
                    request = self._inbox.get(timeout=0.5) if idle else self._inbox.get_nowait()
                    if request is None:
                        return
                    if isinstance(request, _Task):
                        request.run()
                        continue
                    self._waiting.append(request)
                    idle = False
            except queue.Empty:
                pass
            self._admit_waiting()
            for kind, batch in self.batches.items():
                if len(batch):
                    self.on_step(kind, len(batch))
                    self._step(kind, batch)

    def _admit_waiting(self) -> None:
        joining: dict[str, list[_Request]] = {}
        for request in list(self._waiting):
            if request.stream.should_stop():  # client gone or deadline passed while queued
                self._waiting.remove(request)
                self._finish(request)
                continue
            places = self.config.max_batch - len(self.batches[request.kind]) - len(joining.get(request.kind, []))
            if places <= 0:
                continue
            self._waiting.remove(request)
            request.began = time.monotonic()
            request.stream.started = True
            try:
                reference = request.job.reference
                if request.clone_prompt is None and reference is not None:
                    request.clone_prompt = self.clone_prompt(request.kind, reference.waveform, reference.transcript)
                joining.setdefault(request.kind, []).append(request)
            except Exception as exc:
                self._fail(request, exc)
        for kind, requests in joining.items():
            self._join(kind, requests)

    def _join(self, kind: str, requests: list[_Request]) -> None:
        """Start the current segment of each request; their prefills run as one batch."""
        entries, ready = [], []
        for request in requests:
            try:
                entries.append(self._segment_entry(request))
                ready.append(request)
            except Exception as exc:
                self._fail(request, exc)
        if not ready:
            return
        try:
            rows = self.batches[kind].add_many(entries)
        except Exception as exc:
            for request in ready:
                self._fail(request, exc)
            return
        for request, row in zip(ready, rows):
            request.row = row
            self._owners[id(row)] = request

    def _segment_entry(self, request: _Request):
        """The prompt of the request's current segment, and a fresh decoder for it."""
        model = self.models[request.kind]
        job, segment = request.job, request.segments[request.index]
        prompt = build_prompt(model.tts, segment, job.language, speaker=job.speaker,
                              instructions=job.instructions, clone_prompt=request.clone_prompt)
        request.stream.usage.input_tokens += prompt.text_tokens
        cfg = self.config
        request.decoder = StreamingDecoder(
            model.tts,
            # Only the very first chunk of a request is small: it sets the time to first audio.
            first_chunk=cfg.first_chunk_frames if request.index == 0 else cfg.max_chunk_frames,
            max_chunk=cfg.max_chunk_frames,
            context_codes=prompt.ref_codes,
        )
        return prompt, frame_budget(segment, model.max_new_tokens), request.stream.should_stop

    def _step(self, kind: str, batch: FrameBatch) -> None:
        try:
            made, finished = batch.step()
        except Exception as exc:  # the whole batch is unusable: fail its requests, start afresh
            log.exception("batch step failed")
            for row in list(batch.rows):
                self._fail(self._owners.pop(id(row)), exc)
            self.batches[kind] = self._new_batch(kind)
            return
        for row, codes in made:
            request = self._owners[id(row)]
            try:
                audio = request.decoder.push(codes)
                if audio is not None:
                    request.emit_audio(request.joiner.feed(request.index, audio))
            except Exception as exc:
                self._fail(request, exc)
        for row in finished:
            request = self._owners.pop(id(row), None)
            if request is None:  # failed above
                continue
            request.row = None
            request.stream.usage.output_frames += row.frames_made
            try:
                if request.stream.should_stop():  # cancelled or out of time: nobody hears the rest
                    self._finish(request)
                    continue
                request.emit_audio(request.joiner.end_segment(request.index, request.decoder.flush()))
                if request.index + 1 < len(request.segments):
                    request.index += 1
                    self._join(request.kind, [request])
                else:
                    self._finish(request)
            except Exception as exc:
                self._fail(request, exc)

    def _finish(self, request: _Request) -> None:
        request.stream.emit(SynthesisTimeout() if request.stream.expired else END)
        self._release(request)

    def _fail(self, request: _Request, exc: BaseException) -> None:
        if request.row is not None:
            self._owners.pop(id(request.row), None)
            self.batches[request.kind].remove(request.row)
            request.row = None
        request.stream.emit(exc)
        self._release(request)

    def _release(self, request: _Request) -> None:
        self.admission.release(None if request.began is None else time.monotonic() - request.began)
