"""Several requests' generation in one batch per step, with requests joining and leaving
between steps (the core of continuous batching).

Joining requests run their prefill together through the package's own modules (left-padded,
masked, ``prefill.py``); each row's real positions are then copied into its own slot of a
preallocated talker cache, at indices from 0. A prompt longer than ``prefill_chunk``
positions is prefilled in chunks, and prompts joining at once go in groups of at most that
many positions: while other rows are speaking, one chunk per step, so they wait for one
chunk at a time; the joining rows take their slots when their group's prefill ends. Per frame
the talker step and the code predictor's 15 passes run through the compact forward in
``transformer.py`` over those caches: each row writes its own next position and attends only to
its own positions, so rows of different lengths share a step without padding games. The
code predictor runs all rows in lock-step (every frame starts its 17 positions afresh).
Rows that end (end-of-speech, budget, cancellation) leave at the next step; the rows after
them move down a slot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from ..errors import generation_error
from .kv_cache import SlotCache
from .prefill import JoiningGroup, Prefill, prefill_groups
from .prompt import TalkerPrompt
from .rows import BatchRow, RowSpec, mark_failed, never
from .sampling import RowSampling, SamplingParams
from .step_parts import StepParts

log = logging.getLogger(__name__)


class FrameBatch:
    """``parts``: the model's step parts (``StepParts.build``); None builds them for this batch.
    ``prefill_chunk``: positions per prefill chunk (0: whole prompts); while rows are speaking,
    a joining prefill runs one chunk per step."""

    def __init__(self, tts, params: SamplingParams, parts: StepParts | None = None, prefill_chunk: int = 0):
        self.talker = tts.model.talker
        self.params = params
        tcfg = tts.model.config.talker_config
        self.eos_id = tcfg.codec_eos_token_id
        self.rows: list[BatchRow] = []
        parts = parts or StepParts.build(self.talker, params)
        self.stack, self.code_predictor, self.talker_graph = parts.stack, parts.code_predictor, parts.talker_graph
        self.chooser = parts.chooser
        self.cache = SlotCache(self.stack)  # row i of ``rows`` lives in slot i
        self.prefill_chunk = prefill_chunk
        self.joining: list[JoiningGroup] = []  # prefills still running, oldest first

    def __len__(self) -> int:
        """Rows that hold a place: speaking, or still joining."""
        return len(self.rows) + self.joining_rows

    @property
    def joining_rows(self) -> int:
        """Rows whose prefill is still running."""
        return sum(len(group.rows) for group in self.joining)

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
        modules (``prefill.py``), in groups that fit one chunk (``prefill.prefill_groups``). With no
        row speaking the first group is prefilled whole now and its rows join at once. The
        others wait their turn: while rows speak, each step first runs one chunk of the
        oldest prefill (``_advance_joining``), and a group's rows make their first frame at
        the step where its prefill ends."""
        pending = torch.empty(0, device=self.talker.device)  # a joining row's token and state
        rows: list[BatchRow] = []
        for index, group in enumerate(prefill_groups(specs, self.prefill_chunk)):
            prefill = Prefill(self.talker.model, [spec.prompt.prefill for spec in group], self.prefill_chunk)
            if index == 0 and not self.rows:
                prefill.run()
            joining = JoiningGroup(prefill, {})
            for i, (spec, length) in enumerate(zip(group, prefill.lengths)):
                joining.rows[i] = BatchRow(
                    prompt=spec.prompt,
                    max_frames=spec.max_frames,
                    should_stop=spec.should_stop or never,
                    position=length,
                    token=pending,
                    hidden=pending,
                    sampling=spec.sampling or RowSampling(self.params),
                    seen=self.chooser.nothing_seen(),
                )
            rows += joining.rows.values()
            if prefill.finished:
                self._join(joining)
            else:
                self.joining.append(joining)
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

    def _join(self, group: JoiningGroup) -> None:
        """A finished prefill's rows (those still joining) choose their first token and
        take the next slots, their real positions copied in."""
        prefill, indices = group.prefill, list(group.rows)
        rows = [group.rows[i] for i in indices]
        assert prefill.hidden is not None
        hidden = prefill.hidden[indices]
        tokens, finite = self.chooser.choose(hidden[:, -1], rows)
        first_slot = len(self.rows)
        self.cache.reserve(first_slot + len(rows), max([prefill.length + 1, *(r.position + 1 for r in self.rows)]))
        for i, (index, row) in enumerate(zip(indices, rows)):
            self.cache.load(first_slot + i, *prefill.row_cache(index))
            row.token, row.hidden = tokens[i], hidden[i : i + 1]
        mark_failed(rows, finite)
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
        ended = (torch.stack([r.token for r in self.rows]) == self.eos_id).tolist() if self.rows else []
        finished += [r for r, end in zip(self.rows, ended) if r.error is not None or end or r.should_stop()]
        self._drop(finished)
        ready = [not r.waiting_for_text for r in self.rows]
        if not any(ready):
            return [], finished
        stepping = [r for r, on in zip(self.rows, ready) if on]
        hidden = torch.cat([r.hidden for r in stepping], dim=0)
        tokens = torch.stack([r.token for r in stepping])
        seen = torch.cat([r.seen for r in stepping]).scatter_(1, tokens.view(-1, 1), True)
        for i, row in enumerate(stepping):
            row.seen = seen[i : i + 1]
        codes, embeds, finite = self.code_predictor.fill(hidden, tokens, [r.sampling for r in stepping])
        mark_failed(stepping, finite)
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
        made, choice = None, None
        if self.talker_graph is not None and self.talker_graph.takes(len(rows)) and self.chooser.narrow(rows):
            choice = self.chooser.inputs(rows, stepping)
            made = self.talker_graph.attempt(step_input, positions, self.cache, choice)
        if made is not None:
            hidden, tokens, finite = made
            if len(stepping) < len(rows):
                kept = [rows.index(r) for r in stepping]
                hidden, tokens, finite = hidden[kept], tokens[kept], finite[kept]
        else:
            self.cache.prepare_step(positions, length)
            mask = None
            if min(written) != max(written):  # each row attends to its own positions only
                span = torch.arange(length, device=positions.device)
                mask = (span[None, :] <= positions[:, None]).view(len(rows), 1, 1, length)
            hidden = self.stack.forward(step_input, self.stack.rotary(positions.view(-1, 1)), self.cache, mask)
            uniform = None if choice is None else choice[3]  # drawn for a graph that failed: the same draws
            if len(stepping) < len(rows):
                kept = [rows.index(r) for r in stepping]
                hidden, uniform = hidden[kept], None if uniform is None else uniform[kept]
            tokens, finite = self.chooser.choose(hidden[:, -1], stepping, uniform)
        for i, row in enumerate(stepping):
            row.position += 1
            row.hidden = hidden[i : i + 1]
            row.token = tokens[i]
        mark_failed(stepping, finite)

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
