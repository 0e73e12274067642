"""Several requests' generation in one batch per step, with requests joining and leaving
between steps (the core of continuous batching).

Joining requests run their prefill together through the package's own modules (left-padded,
masked, ``prefill.py``); each row's real positions are then copied into its own slot of a
preallocated talker cache, at indices from 0. A prompt longer than ``prefill_chunk``
positions is prefilled in chunks: while other rows are speaking, one chunk per step, so
they wait for one chunk at a time; the joining rows take their slots when it ends. Per frame
the talker step and the code predictor's 15 passes run through the compact forward in
``lean.py`` over those caches: each row writes its own next position and attends only to
its own positions, so rows of different lengths share a step without padding games. The
code predictor runs all rows in lock-step (every frame starts its 17 positions afresh).
Rows that end (end-of-speech, budget, cancellation) leave at the next step; the rows after
them move down a slot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import GenerationError, generation_error
from .compiled import CompiledPredictor, CompiledTalker, CompileMode
from .lean import DecoderStack, FrameCache, SlotCache, per_row
from .prefill import Prefill
from .prompt import TalkerPrompt
from .sampling import RowSampling, SamplingParams, TalkerLogits, choose_rows

log = logging.getLogger(__name__)
NON_FINITE = "the model produced non-finite logits (NaN or infinity); this request was stopped"


@dataclass(eq=False)
class BatchRow:
    prompt: TalkerPrompt
    max_frames: int
    should_stop: Callable[[], bool]
    position: int  # next talker position of this row (its own, padding excluded)
    token: torch.Tensor  # first-codebook token of the frame to make next (empty while joining)
    hidden: torch.Tensor  # (1, 1, D) talker state that produced it (empty while joining)
    sampling: RowSampling  # the request's own parameters and generator
    owner: str | None = None  # the id of the request this row speaks for
    history: list[int] = field(default_factory=list)
    frames_made: int = 0
    error: GenerationError | None = None  # set when the row failed; it leaves at the next step

    @property
    def waiting_for_text(self) -> bool:
        """Whether the row has read all the text it has (a live part whose text is arriving)."""
        return not self.prompt.text_available(self.frames_made)

    @property
    def can_progress(self) -> bool:
        """Whether a step would do something for this row without new text arriving."""
        return self.error is not None or not self.waiting_for_text or self.should_stop()


@dataclass(frozen=True)
class RowSpec:
    """A row to add: its prompt, frame budget, cancellation check, sampling (None: the
    batch's parameters and torch's own generator) and the id of the request it speaks for."""

    prompt: TalkerPrompt
    max_frames: int
    should_stop: Callable[[], bool] | None = None
    sampling: RowSampling | None = None
    owner: str | None = None


@dataclass(frozen=True)
class StepParts:
    """A model's compact talker forward and code-predictor loop, built once when the engine
    takes the model (``build`` joins the q/k/v and gate/up weights in place, see
    ``lean.join_weights``), then shared by every batch of that model. With ``compiled``, both
    forwards run as compiled graphs (``compiled.py``; ``mode`` is torch.compile's)."""

    stack: DecoderStack
    codebooks: CodebookFiller
    talker_graph: CompiledTalker | None = None

    @classmethod
    def build(
        cls,
        talker,
        params: SamplingParams,
        compiled: bool = False,
        mode: CompileMode = None,
        talker_rows: int | None = None,
    ) -> StepParts:
        """``talker_rows``: batches up to this size run the compiled talker step, larger ones
        the eager one (None: any size; see ``compiled.talker_graph_rows``)."""
        stack, codebooks = DecoderStack(talker.model), CodebookFiller(talker, params)
        if not compiled:
            return cls(stack, codebooks)
        codebooks.graph = CompiledPredictor(codebooks.stack, codebooks.project, codebooks.heads, mode)
        return cls(stack, codebooks, CompiledTalker(stack, mode, talker_rows))


@dataclass(eq=False)
class _Joining:
    """Rows whose prompts are being prefilled together, by their index in the prefill."""

    prefill: Prefill
    rows: dict[int, BatchRow]


class FrameBatch:
    """``parts``: the model's step parts (``StepParts.build``); None builds them for this batch.
    ``prefill_chunk``: positions per prefill chunk (0: whole prompts); while rows are speaking,
    a joining prefill runs one chunk per step."""

    def __init__(self, tts, params: SamplingParams, parts: StepParts | None = None, prefill_chunk: int = 0):
        self.talker = tts.model.talker
        self.params = params
        tcfg = tts.model.config.talker_config
        self.eos_id = tcfg.codec_eos_token_id
        self.rules = TalkerLogits(tcfg.vocab_size, self.eos_id, self.talker.device)
        self.rows: list[BatchRow] = []
        parts = parts or StepParts.build(self.talker, params)
        self.stack, self.codebooks, self.talker_graph = parts.stack, parts.codebooks, parts.talker_graph
        self.cache = SlotCache(self.stack)  # row i of ``rows`` lives in slot i
        self.prefill_chunk = prefill_chunk
        self.joining: list[_Joining] = []  # prefills still running, oldest first

    def __len__(self) -> int:
        """Rows that hold a place: speaking, or still joining."""
        return len(self.rows) + sum(len(group.rows) for group in self.joining)

    @property
    def can_progress(self) -> bool:
        """Whether a step would do something without new text arriving."""
        return bool(self.joining) or any(row.can_progress for row in self.rows)

    def add(
        self,
        prompt: TalkerPrompt,
        max_frames: int,
        should_stop: Callable[[], bool] | None = None,
        sampling: RowSampling | None = None,
    ) -> BatchRow:
        return self.add_many([RowSpec(prompt, max_frames, should_stop, sampling)])[0]

    @torch.inference_mode()
    def add_many(self, specs: Sequence[RowSpec]) -> list[BatchRow]:
        """Rows for joining prompts, prefilled together in one forward pass of the package's
        modules (``prefill.py``). With no row speaking they join at once; otherwise a prefill
        in chunks runs its first chunk now and one at each next step (``_prefill_more``), and
        its rows make their first frame at the step where it ends."""
        pending = torch.empty(0, device=self.talker.device)  # a joining row's token and state
        prefill = Prefill(self.talker.model, [spec.prompt.prefill for spec in specs], self.prefill_chunk)
        self._prefill_more(prefill)
        rows = [
            BatchRow(
                prompt=spec.prompt,
                max_frames=spec.max_frames,
                should_stop=spec.should_stop or _never,
                position=length,
                token=pending,
                hidden=pending,
                sampling=spec.sampling or RowSampling(self.params),
                owner=spec.owner,
            )
            for spec, length in zip(specs, prefill.lengths)
        ]
        group = _Joining(prefill, dict(enumerate(rows)))
        if prefill.finished:
            self._join(group)
        else:
            self.joining.append(group)
        return rows

    def _advance_joining(self) -> list[BatchRow]:
        """One chunk of the oldest joining prefill (all of it when no row is speaking);
        when it ends, its rows take their slots. Returns the joining rows that leave: those
        cancelled, and those whose prefill failed (with ``error`` set)."""
        leaving = [row for group in self.joining for row in group.rows.values() if row.should_stop()]
        self._leave_joining(leaving)
        if not self.joining:
            return leaving
        group = self.joining[0]
        try:
            self._prefill_more(group.prefill)
        except Exception as exc:  # fails these rows only: the speaking ones never saw this cache
            log.exception("prefill failed")
            self.joining.pop(0)
            error = generation_error("prefill", exc)
            for row in group.rows.values():
                row.error = error
            return leaving + list(group.rows.values())
        if group.prefill.finished:
            self.joining.pop(0)
            self._join(group)
        return leaving

    def _prefill_more(self, prefill: Prefill) -> None:
        """One chunk while rows are speaking (they step between chunks); all of it otherwise."""
        if self.rows:
            prefill.advance()
        else:
            prefill.run()

    def _join(self, group: _Joining) -> None:
        """A finished prefill's rows (those still joining) choose their first token and
        take the next slots, their real positions copied in."""
        prefill, indices = group.prefill, list(group.rows)
        rows = [group.rows[i] for i in indices]
        assert prefill.hidden is not None
        hidden = prefill.hidden[indices]
        tokens, finite = self._choose(hidden[:, -1], [[] for _ in rows], [0] * len(rows), [r.sampling for r in rows])
        first_slot = len(self.rows)
        self.cache.reserve(first_slot + len(rows), max([prefill.length + 1, *(r.position + 1 for r in self.rows)]))
        for i, (index, row) in enumerate(zip(indices, rows)):
            self.cache.load(first_slot + i, *prefill.row_cache(index))
            row.token, row.hidden = tokens[i], hidden[i : i + 1]
        _mark_failed(rows, finite)
        self.rows.extend(rows)

    def _leave_joining(self, leaving: list[BatchRow]) -> None:
        for group in self.joining:
            group.rows = {i: row for i, row in group.rows.items() if row not in leaving}
        self.joining = [group for group in self.joining if group.rows]

    @torch.inference_mode()
    def step(self) -> tuple[list[tuple[BatchRow, torch.Tensor]], list[BatchRow]]:
        """One frame for every row that has its text (a row whose text is still arriving
        waits, keeping its place and cache, once it has read all it has). Returns (row,
        codes (16,)) for each frame made, and the rows that finished (they have left the
        batch); a finished row with ``error`` set failed. A joining prefill runs its next
        chunk first."""
        finished = self._advance_joining()
        finished += [r for r in self.rows if r.error is not None or int(r.token) == self.eos_id or r.should_stop()]
        self._drop(finished)
        ready = [not r.waiting_for_text for r in self.rows]
        if not any(ready):
            return [], finished
        stepping = [r for r, on in zip(self.rows, ready) if on]
        for row in stepping:
            row.history.append(int(row.token))
        hidden = torch.cat([r.hidden for r in stepping], dim=0)
        tokens = torch.stack([r.token for r in stepping])
        codes, embeds, finite = self.codebooks.fill(hidden, tokens, [r.sampling for r in stepping])
        _mark_failed(stepping, finite)
        made = []
        for i, row in enumerate(stepping):
            if row.error is None:
                row.frames_made += 1
                made.append((row, codes[i]))
        done = [r for r in stepping if r.error is not None or r.frames_made >= r.max_frames]
        finished += done
        if done:
            kept = [i for i, r in enumerate(stepping) if r not in done]
            embeds, stepping = embeds[kept], [stepping[i] for i in kept]
            self._drop(done)
        if stepping:
            self._talker_step(stepping, embeds)
        return made, finished

    def _talker_step(self, stepping: list[BatchRow], embeds: torch.Tensor) -> None:
        """Advance the talker one position for the ``stepping`` rows (``embeds``: their last
        frames). Rows waiting for text go through the same forward (the batch is one call)
        but keep their state: what they write lands on their next position, which they
        overwrite when they step."""
        rows = self.rows
        if len(stepping) < len(rows):  # waiting rows: any input, the output is dropped
            full = embeds.new_zeros((len(rows), *embeds.shape[1:]))
            full[[rows.index(r) for r in stepping]] = embeds
            embeds = full
        step_input = embeds.sum(1, keepdim=True)
        text = []
        for row in rows:
            trailing, frame = row.prompt.trailing_text, row.frames_made - 1
            text.append(trailing[:, frame : frame + 1] if 0 <= frame < trailing.shape[1] else row.prompt.tts_pad)
        step_input = step_input + torch.cat(text, dim=0)
        written = [r.position for r in rows]
        length = max(written) + 1
        self.cache.reserve(len(rows), length)
        positions = torch.tensor(written, device=step_input.device)
        hidden = None if self.talker_graph is None else self.talker_graph.attempt(step_input, positions, self.cache)
        if hidden is None:
            self.cache.prepare_step(positions, length)
            mask = None
            if min(written) != max(written):  # each row attends to its own positions only
                span = torch.arange(length, device=positions.device)
                mask = (span[None, :] <= positions[:, None]).view(len(rows), 1, 1, length)
            hidden = self.stack.forward(step_input, self.stack.rotary(positions.view(-1, 1)), self.cache, mask)
        if len(stepping) < len(rows):
            hidden = hidden[[rows.index(r) for r in stepping]]
        histories, frames = [r.history for r in stepping], [r.frames_made for r in stepping]
        tokens, finite = self._choose(hidden[:, -1], histories, frames, [r.sampling for r in stepping])
        for i, row in enumerate(stepping):
            row.position += 1
            row.hidden = hidden[i : i + 1]
            row.token = tokens[i]
        _mark_failed(stepping, finite)

    def _choose(
        self, hidden: torch.Tensor, histories: list[list[int]], frames: list[int], samplings: list[RowSampling]
    ):
        """hidden (B, D) -> (next first-codebook token per row, whether each row's logits were
        finite); the rules depend on each row's history, the choice on its own sampling."""
        head = self.talker.codec_head
        logits = per_row(hidden, head.weight, head.bias)
        finite = _finite_rows(logits)
        scores = [
            self.rules.apply(
                logits[i : i + 1],
                torch.tensor([history], dtype=torch.long, device=logits.device).view(1, -1),
                frame,
                sampling.params.repetition_penalty,
            )
            for i, (history, frame, sampling) in enumerate(zip(histories, frames, samplings))
        ]
        samplers = [sampling.params.talker for sampling in samplings]
        return choose_rows(torch.cat(scores, dim=0), samplers, [s.generator for s in samplings]), finite

    @torch.inference_mode()  # the caches are inference tensors: changed only in this mode
    def remove(self, row: BatchRow) -> None:
        self._drop([row])

    def _drop(self, leaving: list[BatchRow]) -> None:
        """Rows leave; the ones after them move down to keep slots 0..B-1 filled."""
        if not leaving:
            return
        self._leave_joining(leaving)
        length = self.cache_length
        kept = [(slot, r) for slot, r in enumerate(self.rows) if r not in leaving]
        for target, (source, _) in enumerate(kept):
            if source != target:
                self.cache.move(source, target, length)
        self.rows = [r for _, r in kept]
        self.cache.shrink_to(len(self.rows), self.cache_length + 1)

    @property
    def cache_length(self) -> int:
        """Positions the longest row holds in the talker cache (0 when empty)."""
        return max((r.position for r in self.rows), default=0)


def _never() -> bool:
    return False


def _finite_rows(logits: torch.Tensor) -> torch.Tensor:
    """(B, V) logits -> whether each row is finite. A non-finite row still yields some
    in-range token (argmax and the inverse-CDF draw never fail on NaN); it is thrown away
    with its row."""
    return torch.isfinite(logits).all(dim=-1)


def _mark_failed(rows: list[BatchRow], finite: torch.Tensor) -> None:
    if bool(finite.all()):  # one check per call; the usual case costs nothing more
        return
    for row, ok in zip(rows, finite.tolist()):
        if not ok and row.error is None:
            row.error = GenerationError(NON_FINITE)


class CodebookFiller:
    """Codebooks 2..16 of one frame for every row: the code predictor's 15 passes through
    the compact forward, over a 17-position cache that every frame rewrites."""

    def __init__(self, talker, params: SamplingParams):
        predictor = talker.code_predictor
        self.first_embedding = talker.get_input_embeddings()
        self.embeddings = predictor.model.get_input_embeddings()
        self.heads = predictor.lm_head
        self.project = predictor.small_to_mtp_projection
        self.groups = talker.config.num_code_groups - 1
        self.sampler = params.predictor
        self.stack = DecoderStack(predictor.model)
        self.cache = FrameCache(self.stack, positions=self.groups + 2)
        self.graph: CompiledPredictor | None = None  # set by StepParts.build(compiled=True)

    @torch.inference_mode()
    def fill(self, hidden: torch.Tensor, first: torch.Tensor, samplings: list[RowSampling] | None = None):
        """``hidden`` (B, 1, D) is the talker's last hidden state, ``first`` (B,) the
        first-codebook tokens, ``samplings`` each row's (default: this filler's sampler).
        Returns codes (B, 16), their input embeddings (B, 16, D) and whether each row's
        logits stayed finite (B,)."""
        generators: list[torch.Generator | None]
        if samplings is None:
            samplers, generators = [self.sampler] * first.shape[0], [None] * first.shape[0]
        else:
            samplers, generators = [s.params.predictor for s in samplings], [s.generator for s in samplings]
        rows = first.shape[0]
        first_embed = self.first_embedding(first.view(-1, 1))
        embeds = [first_embed]
        codes = [first.view(-1)]
        self.cache.begin(rows)
        step_input = torch.cat([hidden, first_embed], dim=1)
        all_finite = torch.ones(rows, dtype=torch.bool, device=first.device)
        for group in range(self.groups):
            logits = self._logits(group, step_input)
            all_finite &= _finite_rows(logits)
            code = choose_rows(logits, samplers, generators)
            codes.append(code)
            step_input = self.embeddings[group](code.view(-1, 1))
            embeds.append(step_input)
        return torch.stack(codes, dim=1), torch.cat(embeds, dim=1), all_finite

    def _logits(self, group: int, step_input: torch.Tensor) -> torch.Tensor:
        """One pass over the frame's next position(s): that group's logits (B, V) in float32."""
        start, end = self.cache.start, self.cache.start + step_input.shape[1]
        logits = None if self.graph is None else self.graph.attempt(group, step_input, self.cache)
        if logits is None:
            rotary = self.stack.cos[None, None, start:end], self.stack.sin[None, None, start:end]
            out = self.stack.forward(self.project(step_input), rotary, self.cache, mask=None)
            head = self.heads[group]
            logits = per_row(out[:, -1], head.weight, head.bias).float()
        self.cache.start = end
        return logits
