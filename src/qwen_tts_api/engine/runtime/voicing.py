"""What the runner holds for one request, by its id, and how it makes that request's rows.

A ``Voicing`` lives from the first order that names the request (a look-up of its reference,
a count of a live part's tokens, its first start) until the scheduler drops it. It holds
every tensor the request needs: its clone prompt, its sampling generator (which runs on
across segments), the reference decoded once for in-context cloning, a live part's final
token ids, its current row and its audio (``stream_audio.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...audio.tempo import TempoFilter
from ...text.budget import frame_budget
from ...voices.prompt import ClonePrompt
from ..generation.first_chunks import FirstChunk, together_sizes
from ..generation.live_tokens import PartTokens
from ..generation.prompt import TalkerPrompt, build_live_prompt, build_prompt, live_start_tokens, text_embeddings
from ..generation.rows import BatchRow, RowSpec
from ..generation.sampling import RowSampling, SamplingParams
from ..generation.streaming_decoder import DecoderState, StreamingDecoder
from ..models.loading import LoadedModel
from .jobs import EngineConfig
from .orders import LivePart, PartCount, Ticket
from .stream import PartStarted
from .stream_audio import StreamAudio


@dataclass(eq=False)
class Voicing:
    ticket: Ticket
    audio: StreamAudio
    clone_prompt: ClonePrompt | None = None  # a saved voice's, or its inline reference's once known
    reference_key: tuple[str, str | None] | None = None  # its inline reference in the prompt cache
    decoder_context: DecoderState | None = None  # in-context cloning: the reference, decoded once
    sampling: RowSampling | None = None
    index: int = 0  # the segment (or live part) its row speaks
    row: BatchRow | None = None  # its current row: the one link between a row and its request
    tokens: PartTokens | None = None  # a live part's final ids
    tokens_of: int = -1  # which part ``tokens`` counts
    start_tokens: int | None = None  # ids a live part needs before it can start (cloning)
    frame_limit: int = 0  # a live part's frames at most
    first_chunk: int = 0  # frames of each live part's first chunk (each is heard first after a wait)

    @property
    def request_id(self) -> str:
        return self.ticket.request_id

    # --- a plain request's segments ---
    def segment_row(self, model: LoadedModel, params: SamplingParams, config: EngineConfig, index: int) -> RowSpec:
        """The prompt of segment ``index`` as a row to add, with a fresh decoder for it."""
        job, stream = self.ticket.job, self.ticket.stream
        segment = job.text.segments[index]
        prompt = build_prompt(
            model.tts,
            segment.text,
            segment.language or job.language,
            speaker=job.speaker,
            instructions=job.instructions,
            clone_prompt=self.clone_prompt,
        )
        stream.usage.input_tokens += prompt.text_tokens
        # Only the very first chunk of a request is small: it sets the time to first audio.
        # It goes ahead of other streams' audio only where a client hears it early; a complete
        # response keeps the same chunks, so the two carry the same samples (docs/STREAMING.md).
        first = (job.first_chunk_frames or config.first_chunk_frames) if index == 0 else None
        chunk, urgent = first or config.max_chunk_frames, first is not None and job.streaming
        self._begin_audio(model, prompt, index, chunk, config.max_chunk_frames, urgent, segment.rate)
        if job.announce_parts:
            stream.emit(PartStarted(index, segment.text))
        self.audio.silence(segment.pause_before)
        frames = min(segment.max_frames, job.max_frames or segment.max_frames)  # max_new_tokens caps each segment
        return RowSpec(prompt, frames, stream.should_stop, self._sampling(model, params))

    # --- a live turn's parts ---
    def count(self, model: LoadedModel, part: LivePart) -> PartCount:
        """How many of the part's ids are final, and how many it needs to start."""
        self._sync_tokens(model, part)
        if self.start_tokens is None:
            self.start_tokens = live_start_tokens(model.tts, self.clone_prompt)
        assert self.tokens is not None
        return PartCount(len(self.tokens.ids), self.start_tokens)

    def part_row(self, model: LoadedModel, params: SamplingParams, config: EngineConfig, part: LivePart) -> RowSpec:
        """The prompt of a live part from the ids final so far (more follow)."""
        job = self.ticket.job
        self._sync_tokens(model, part)
        assert self.tokens is not None
        self.frame_limit = min(model.max_new_tokens, job.max_frames or model.max_new_tokens)
        self.first_chunk = job.first_chunk_frames or config.first_chunk_frames
        prompt = build_live_prompt(
            model.tts,
            list(self.tokens.ids),
            job.language,
            speaker=job.speaker,
            instructions=job.instructions,
            clone_prompt=self.clone_prompt,
            final=part.closed,
        )
        self._begin_audio(model, prompt, part.index, self.first_chunk, config.max_chunk_frames, True, 1.0)
        spoken = job.spoken(part.text)
        self.ticket.stream.emit(PartStarted(part.index, spoken))
        budget = frame_budget(spoken, self.frame_limit)
        return RowSpec(prompt, budget, self.ticket.stream.should_stop, self._sampling(model, params))

    def feed(self, model: LoadedModel, part: LivePart) -> None:
        """Give the speaking part's row the ids that became final, and its end."""
        row = self.row
        assert row is not None
        fresh = self._sync_tokens(model, part)
        ending = part.closed and not row.prompt.text_final
        if fresh:
            row.prompt.extend(text_embeddings(model.tts, fresh))
        if ending:
            row.prompt.finish()
        if fresh or ending:  # the budget grows with the text (not recounted on every loop)
            row.max_frames = frame_budget(self.ticket.job.spoken(part.text), self.frame_limit)

    def _sync_tokens(self, model: LoadedModel, part: LivePart) -> list[int]:
        """The part's ids that became final since the last call."""
        if self.tokens is None or self.tokens_of != part.index:
            language = self.ticket.job.language if self.ticket.job.normalize else None
            self.tokens, self.tokens_of = PartTokens(model.tts, model.control_tokens, language), part.index
        return self.tokens.update(part.text, part.closed)

    # --- both ---
    def _begin_audio(
        self,
        model: LoadedModel,
        prompt: TalkerPrompt,
        index: int,
        chunk: int,
        max_chunk: int,
        urgent: bool,
        rate: float,
    ) -> None:
        if prompt.ref_codes is not None and self.decoder_context is None:
            self.decoder_context = DecoderState.prime(model.tts, prompt.ref_codes)
        decoder = StreamingDecoder(model.tts, chunk, max_chunk, context=self.decoder_context)
        # A first chunk is tracked where it is heard early (urgent) or may be decoded with
        # other streams' (from silence, where the probe found that chunk length exact).
        groupable = self.decoder_context is None and bool(together_sizes(model.tts, chunk))
        first = FirstChunk(chunk, urgent, groupable) if urgent or groupable else None
        self.audio.begin(index, decoder, TempoFilter(rate) if rate != 1.0 else None, first)

    def _sampling(self, model: LoadedModel, params: SamplingParams) -> RowSampling:
        """The request's sampling, made once: its generator runs on across its segments."""
        if self.sampling is None:
            choice = self.ticket.job.sampling
            params = params.overridden(choice.temperature, choice.top_p, choice.top_k, choice.repetition_penalty)
            self.sampling = RowSampling.seeded(params, choice.seed, model.tts.model.talker.device)
        return self.sampling
