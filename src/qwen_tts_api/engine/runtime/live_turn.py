"""A voice agent's turn in the engine: text arrives while it is spoken (``job.live``).

Its parts (``text/live.py``) are generated one after another like segments. A part starts
once it holds a first clause (``can_start``) and reads what arrives while it speaks: the
tokens that became final are handed to its row (``feed_row``), and while the row waits for
more text, what it has made is flushed to the listener (``flush_if_waiting``). Between two
parts the turn keeps its slot in the batch.
"""

from __future__ import annotations

from ...constants import ModelKind
from ...text.budget import frame_budget
from ...text.live import Part, PartSplitter
from ...text.normalize import normalize
from ..generation.batching import RowSpec
from ..generation.joining import SegmentJoiner
from ..generation.live_tokens import PartTokens
from ..generation.prompt import build_live_prompt, live_start_tokens, text_embeddings
from ..generation.sampling import SamplingParams
from ..models.loading import LoadedModel
from .jobs import EngineConfig, SpeechJob
from .requests import Request, RequestState
from .stream import PartEnded, PartStarted, SynthesisStream


class LiveRequest(Request):
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
        self._ready = False  # set by ``prepare_start`` while waiting
        self._flushed: tuple[object, int] | None = None  # (row, its frames) at the last flush

    @property
    def first_chunk(self) -> int:
        return self.job.first_chunk_frames or self._first_chunk_default

    def take_text(self) -> None:
        text, done = self.live.take()
        self.splitter.feed(text)
        if done:
            self.splitter.finish()

    @property
    def part(self) -> Part | None:
        parts = self.splitter.parts
        return parts[self.index] if self.index < len(parts) else None

    @property
    def done(self) -> bool:
        return self.splitter.finished and self.index >= len(self.splitter.parts)

    # --- what the policy reads ---
    @property
    def might_start(self) -> bool:
        """Whether ``can_start`` may hold now (cheap: no tokenizing; new text wakes the loop)."""
        part = self.part
        if part is None or not part.ready:
            return self.done
        if self.tokens is None or self.start_tokens is None:
            return True
        return len(self.tokens.ids) >= self.start_tokens or part.closed

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def empty(self) -> bool:
        return self.done

    def prepare_start(self, model: LoadedModel) -> None:
        """While waiting or between parts: pass over parts with nothing to speak and say
        whether the current one can start (``ready``). Its clone prompt must be known."""
        self._ready = False
        if not self.might_start:
            return
        while not self.can_start(model) and self.skip_empty_part():
            pass
        self._ready = not self.done and self.can_start(model)

    def spoken(self, text: str) -> str:
        """A part's text as reported and budgeted: with its numbers written out, if asked."""
        return normalize(text, self.job.language) if self.job.normalize else text

    # --- tokens ---
    def sync_tokens(self, model: LoadedModel) -> list[int]:
        """The current part's ids that became final since the last call."""
        part = self.part
        if part is None:
            return []
        if self.tokens is None:
            language = self.job.language if self.job.normalize else None
            self.tokens = PartTokens(model.tts, model.control_tokens, language)
        return self.tokens.update(part.text, part.closed)

    def can_start(self, model: LoadedModel) -> bool:
        """Whether the current part has what it needs to start speaking."""
        part = self.part
        if part is None or not part.ready:
            return False
        self.sync_tokens(model)
        assert self.tokens is not None
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

    # --- the runner's side ---
    def next_row(self, model: LoadedModel, params: SamplingParams, config: EngineConfig) -> RowSpec:
        """The prompt of the current part from the ids final so far (more follow)."""
        job, part, tokens = self.job, self.part, self.tokens
        assert part is not None and tokens is not None
        self.frame_limit = min(model.max_new_tokens, job.max_frames or model.max_new_tokens)
        prompt = build_live_prompt(
            model.tts,
            list(tokens.ids),
            job.language,
            speaker=job.speaker,
            instructions=job.instructions,
            clone_prompt=self.clone_prompt,
            final=part.closed,
        )
        self._prime_decoder(model, prompt.ref_codes)
        self.start_decoder(model, self.first_chunk, config.max_chunk_frames)
        self.first_audio_frames = self.first_chunk
        spoken = self.spoken(part.text)
        self.stream.emit(PartStarted(self.index, spoken))
        budget = frame_budget(spoken, self.frame_limit)
        sampling = self.sampling(params, model.tts.model.talker.device)
        return RowSpec(prompt, budget, self.stream.should_stop, sampling, owner=self.id)

    def feed_row(self, model: LoadedModel) -> None:
        """Give the generating part's row the tokens that became final, and its end."""
        row, part = self.row, self.part
        assert row is not None and part is not None
        fresh = self.sync_tokens(model)
        ending = part.closed and not row.prompt.text_final
        if fresh:
            row.prompt.extend(text_embeddings(model.tts, fresh))
        if ending:
            row.prompt.finish()
        if fresh or ending:  # the budget grows with the text (not recounted on every loop)
            row.max_frames = frame_budget(self.spoken(part.text), self.frame_limit)
        self.flush_if_waiting()

    def flush_if_waiting(self) -> None:
        """A part waiting for text: let the listener hear what is made, in small chunks after;
        its state says whether its row steps."""
        row = self.row
        if row is None:
            return
        waiting = row.waiting_for_text
        state = RequestState.WAITING_FOR_TEXT if waiting else RequestState.RUNNING
        if state is not self.state:
            self.move_to(state)
        # Once per frame made, not once per step: a waiting row makes none between steps.
        if waiting and self.decoder is not None and self._flushed != (row, row.frames_made):
            self._flushed = (row, row.frames_made)
            decoder, index, first_chunk = self.decoder, self.index, self.first_chunk

            def flush() -> None:
                if (audio := decoder.flush()) is not None:  # what it has made so far
                    self.emit_audio(self.joiner.feed(index, audio), None)
                    decoder.next_chunk = first_chunk

            self.audio(flush)

    def end_part(self, text_tokens: int) -> None:
        """The part's generation ended: its last audio; the next part comes after."""
        part = self.part
        assert part is not None and self.decoder is not None
        self.stream.usage.input_tokens += text_tokens
        self.end_audio()
        if not part.closed:  # the model ended before its text did: what follows is a new part
            self.splitter.close_current()
        self.stream.emit(PartEnded(self.index, self.spoken(part.text)))
        self.index += 1
        self.tokens = None
