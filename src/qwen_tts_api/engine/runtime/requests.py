"""A request's life inside the engine: its state, why it finished, and what it carries.

A request is found by its id (``Request.id``; a batch row names its owner by it). Its state
moves only along ``TRANSITIONS``:

    WAITING ──▶ RUNNING ◀──▶ WAITING_FOR_TEXT        (a live part's row has read all its text)
       │          │  ▲               │
       │          ▼  │               ▼
       │       BETWEEN_PARTS ◀───────┘               (a live turn between two parts keeps its slot)
       ▼          ▼
    FINISHED (with a FinishReason) ◀── from any state

A plain request runs its text segments one after another (RUNNING → RUNNING, a new row for
each segment); a live turn (``live_turn.py``) runs its parts the same way, with the two
live-only states in between.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from enum import Enum

import numpy as np
import torch

from ...audio.tempo import TempoFilter
from ...constants import SAMPLE_RATE, ModelKind
from ...voices.prompt import ClonePrompt
from ..errors import generation_error
from ..generation.batching import BatchRow, RowSpec
from ..generation.decoding import DecoderContext, StreamingDecoder, together_sizes
from ..generation.joining import SegmentJoiner
from ..generation.prompt import build_prompt
from ..generation.sampling import RowSampling, SamplingParams
from ..models.loading import LoadedModel
from .jobs import EngineConfig, SpeechJob
from .stream import PartEnded, PartStarted, SynthesisStream

log = logging.getLogger(__name__)


class RequestState(Enum):
    WAITING = "waiting"  # queued until its model's batch has a free slot
    RUNNING = "running"  # its row makes a frame at every step
    WAITING_FOR_TEXT = "waiting_for_text"  # live: its row has read all the text that has arrived
    BETWEEN_PARTS = "between_parts"  # live: a part ended and the next is not ready; it keeps its slot
    FINISHED = "finished"


class FinishReason(Enum):
    DONE = "done"  # all its text was spoken
    CANCELLED = "cancelled"  # the client went away (or barged in)
    TIMED_OUT = "timed_out"  # QWEN_TTS_REQUEST_TIMEOUT passed
    FAILED = "failed"  # its generation failed (the others went on)
    ENGINE_STOPPED = "engine_stopped"  # the scheduler cannot go on


_S = RequestState
TRANSITIONS: Mapping[RequestState, frozenset[RequestState]] = {
    _S.WAITING: frozenset({_S.RUNNING, _S.FINISHED}),
    _S.RUNNING: frozenset({_S.RUNNING, _S.WAITING_FOR_TEXT, _S.BETWEEN_PARTS, _S.FINISHED}),
    _S.WAITING_FOR_TEXT: frozenset({_S.RUNNING, _S.BETWEEN_PARTS, _S.FINISHED}),
    _S.BETWEEN_PARTS: frozenset({_S.RUNNING, _S.FINISHED}),
    _S.FINISHED: frozenset(),
}
HOLDS_SLOT = frozenset({_S.RUNNING, _S.WAITING_FOR_TEXT, _S.BETWEEN_PARTS})


class IllegalTransition(RuntimeError):
    """A request was moved along an edge its lifecycle does not have (a bug)."""


class Request:
    """One speech request: its text segments are generated one after another, each as a
    row of its model's batch."""

    def __init__(self, kind: ModelKind, job: SpeechJob, stream: SynthesisStream, admitted: bool = True):
        self.id = f"req-{uuid.uuid4().hex[:16]}"
        self.kind, self.job, self.stream = kind, job, stream
        self.state = RequestState.WAITING
        self.finish_reason: FinishReason | None = None
        self.admitted = admitted  # holds a place in admission control (the warm-up does not)
        self.index = 0  # the segment (or live part) being spoken
        self.joiner = SegmentJoiner(len(job.text.segments))
        self.clone_prompt: ClonePrompt | None = job.voice_prompt  # a saved voice's, or computed on admission
        self.reference_key: tuple[str, str | None] | None = None  # its inline reference in the prompt cache
        self.decoder: StreamingDecoder | None = None
        self.decoder_context: DecoderContext | None = None  # in-context cloning: the reference, decoded once
        self.row: BatchRow | None = None
        self.stretch: TempoFilter | None = None  # the current segment's own rate (SSML prosody)
        self.began: float | None = None  # when it left the queue
        self.audio_error: Exception | None = None  # its decoding failed on the audio thread
        self.first_audio_frames = 0  # frames still to come before its first audio chunk (urgent work)
        self._opening: list[torch.Tensor] | None = None  # see start_decoder
        self._opening_frames = 0
        self._sampling: RowSampling | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.kind} {self.state.value}>"

    # --- what the policy reads (no tensors) ---
    @property
    def stopping(self) -> bool:
        """Cancelled by its client, or past its deadline."""
        return self.stream.should_stop()

    @property
    def needs_encoder(self) -> bool:
        """Inline reference audio whose clone prompt is neither stored nor cached yet."""
        return self.job.reference is not None and self.clone_prompt is None

    @property
    def might_start(self) -> bool:
        """A cheap upper bound of ``ready`` (live turns: without tokenizing)."""
        return True

    @property
    def ready(self) -> bool:
        """Whether it has something to speak now."""
        return True

    @property
    def empty(self) -> bool:
        """Whether it turned out to have nothing to speak at all (a live turn's text)."""
        return False

    @property
    def holds_slot(self) -> bool:
        return self.state in HOLDS_SLOT

    # --- the lifecycle ---
    def move_to(self, state: RequestState, reason: FinishReason | None = None) -> None:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self!r} cannot become {state.value}")
        self.state = state
        if state is RequestState.FINISHED:
            self.finish_reason = reason or FinishReason.DONE

    # --- what the runner builds and feeds ---
    def sampling(self, params: SamplingParams, device) -> RowSampling:
        """The request's sampling, made once: its generator runs on across its segments."""
        if self._sampling is None:
            choice = self.job.sampling
            params = params.overridden(choice.temperature, choice.top_p, choice.top_k, choice.repetition_penalty)
            self._sampling = RowSampling.seeded(params, choice.seed, device)
        return self._sampling

    def next_row(self, model: LoadedModel, params: SamplingParams, config: EngineConfig) -> RowSpec:
        """The prompt of the current segment as a row to add, with a fresh decoder for it."""
        job, segment = self.job, self.job.text.segments[self.index]
        prompt = build_prompt(
            model.tts,
            segment.text,
            segment.language or job.language,
            speaker=job.speaker,
            instructions=job.instructions,
            clone_prompt=self.clone_prompt,
        )
        self.stream.usage.input_tokens += prompt.text_tokens
        self._prime_decoder(model, prompt.ref_codes)
        # Only the very first chunk of a request is small: it sets the time to first audio.
        first_chunk = (job.first_chunk_frames or config.first_chunk_frames) if self.index == 0 else None
        self.start_decoder(model, first_chunk or config.max_chunk_frames, config.max_chunk_frames)
        # Urgent work (ahead of other streams', the next step waiting for it) only where a
        # client hears it early. A complete response keeps the stream's chunks all the same,
        # so the two carry the same samples (docs/STREAMING.md).
        self.first_audio_frames = (first_chunk or 0) if job.streaming else 0
        sampling = self.sampling(params, model.tts.model.talker.device)
        self.stretch = TempoFilter(segment.rate) if segment.rate != 1.0 else None
        if job.announce_parts:
            self.stream.emit(PartStarted(self.index, segment.text))
        self.emit_silence(segment.pause_before)
        frames = min(segment.max_frames, job.max_frames or segment.max_frames)  # max_new_tokens caps each segment
        return RowSpec(prompt, frames, self.stream.should_stop, sampling, owner=self.id)

    def start_decoder(self, model: LoadedModel, first_chunk: int, max_chunk: int) -> None:
        """A decoder for the segment (or part) about to start."""
        self.decoder = StreamingDecoder(model.tts, first_chunk, max_chunk, context=self.decoder_context)
        # Its first chunk's codes as they come, so that streams starting from silence together
        # can decode their first chunks in one call (``runner.step``, ``decoding.FirstChunks``);
        # only where the probe found a chunk of that length exact in some batch.
        together = self.decoder_context is None and together_sizes(model.tts, first_chunk)
        self._opening = [] if together else None
        self._opening_frames = first_chunk

    def opening_with(self, codes: torch.Tensor) -> torch.Tensor | None:
        """The (n, 16) codes of its decoder's first chunk if this step's frame ``codes``
        completes it and the decoder starts from silence; else None."""
        if self._opening is None or len(self._opening) + 1 != self._opening_frames:
            return None
        return torch.stack([*self._opening, codes])

    def _prime_decoder(self, model: LoadedModel, ref_codes) -> None:
        if ref_codes is not None and self.decoder_context is None:
            self.decoder_context = DecoderContext.prime(model.tts, ref_codes)

    def audio(self, work: Callable[[], None], urgent: bool = False) -> None:
        """Decoding and the audio it makes: here, or on the audio thread when there is one
        (``work`` must take what it needs from the request now, not when it runs: by then the
        scheduler may have moved the request on); ``urgent`` (its first audio) ahead of other
        requests' work. There a failure marks the request, tells its client, and skips the
        request's later audio work; the scheduler fails it."""
        worker = self.stream.audio_worker
        if worker is None:
            work()
            return

        def contained() -> None:
            if self.audio_error is not None:
                return
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                log.exception("decoding failed for %s", self.id)
                self.audio_error = exc
                self.stream.emit(generation_error("decoding", exc))

        worker.submit(self.stream, contained, urgent)

    def emit_audio(self, audio: np.ndarray | None, stretch: TempoFilter | None) -> None:
        if audio is not None and audio.size and stretch is not None:
            audio = stretch.process(audio)
        if audio is not None and audio.size:
            self.stream.emit(audio)

    def emit_silence(self, seconds: float) -> None:
        """A pause: real samples, as long as asked (not stretched by the segment's rate)."""
        samples = round(seconds * SAMPLE_RATE)
        if samples > 0:
            self.stream.emit(np.zeros(samples, np.float32))

    def decoded(self, codes) -> None:
        """A frame this request's row made: its audio, once a chunk is complete."""
        decoder, index, stretch = self.decoder, self.index, self.stretch
        assert decoder is not None

        def decode() -> None:
            audio = decoder.push(codes)
            if audio is not None:
                self.emit_audio(self.joiner.feed(index, audio), stretch)

        self.audio(decode, urgent=self.first_audio_frames > 0)
        self.first_audio_frames = max(self.first_audio_frames - 1, 0)
        if self._opening is not None:
            self._opening.append(codes)
            if len(self._opening) >= self._opening_frames:
                self._opening = None

    def end_audio(self) -> None:
        """The current segment's (or part's) last audio, its rate's tail after it."""
        decoder, index, stretch = self.decoder, self.index, self.stretch
        assert decoder is not None
        self.stretch = None

        def finish() -> None:
            self.emit_audio(self.joiner.end_segment(index, decoder.flush()), stretch)
            if stretch is not None:
                self.emit_audio(stretch.flush(), None)

        self.audio(finish, urgent=self.first_audio_frames > 0)  # it ended before its first chunk
        self.first_audio_frames = 0

    def end_segment(self) -> bool:
        """Its row ended: the segment's last audio. True when another segment follows."""
        self.end_audio()
        segment = self.job.text.segments[self.index]
        self.emit_silence(segment.pause_after)
        if self.job.announce_parts:
            self.stream.emit(PartEnded(self.index, segment.text))
        if self.index + 1 < len(self.job.text.segments):
            self.index += 1
            return True
        return False
