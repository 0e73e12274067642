"""Several requests' generation in one batch per step, with requests joining and leaving
between steps (the core of continuous batching).

Joining requests run their prefill together (left-padded, masked), then their talker KV
cache is merged into the batch cache, left-padded to a common length with an attention mask; each row keeps its own
positions, so padding changes nothing it attends to. The code predictor runs all rows in
lock-step (every frame starts a fresh 17-position cache), so it needs no padding. Rows
that end (end-of-speech, budget, cancellation) leave the batch at the next step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache

from .errors import GenerationError
from .prompt import TalkerPrompt
from .sampling import SamplingParams, TalkerLogits

NON_FINITE = "the model produced non-finite logits (NaN or infinity); this request was stopped"


@dataclass(eq=False)
class BatchRow:
    prompt: TalkerPrompt
    max_frames: int
    should_stop: Callable[[], bool]
    position: int  # next talker position of this row (its own, padding excluded)
    token: torch.Tensor  # first-codebook token of the frame to make next
    hidden: torch.Tensor  # (1, 1, D) talker state that produced it
    history: list[int] = field(default_factory=list)
    frames_made: int = 0
    error: GenerationError | None = None  # set when the row failed; it leaves at the next step


class FrameBatch:
    def __init__(self, tts, params: SamplingParams):
        self.talker = tts.model.talker
        self.params = params
        tcfg = tts.model.config.talker_config
        self.eos_id = tcfg.codec_eos_token_id
        self.rules = TalkerLogits(tcfg.vocab_size, self.eos_id, self.talker.device)
        self.rows: list[BatchRow] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, L): 1 where a cached position is real

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, prompt: TalkerPrompt, max_frames: int, should_stop: Callable[[], bool] | None = None) -> BatchRow:
        return self.add_many([(prompt, max_frames, should_stop)])[0]

    @torch.inference_mode()
    def add_many(self, entries: list[tuple[TalkerPrompt, int, Callable[[], bool] | None]]) -> list[BatchRow]:
        """Prefill several joining prompts in one forward pass (left-padded to the longest,
        each with its own positions and a mask over the padding), then merge them in."""
        prompts = [prompt for prompt, _, _ in entries]
        lengths = [p.prefill.shape[1] for p in prompts]
        longest = max(lengths)
        device = self.talker.device
        inputs = torch.cat([_left_pad(p.prefill, longest) for p in prompts], dim=0)
        mask = torch.cat([_left_pad(torch.ones(1, n, dtype=torch.long, device=device), longest) for n in lengths])
        cache = DynamicCache()
        if len(prompts) == 1:  # no padding: the plain call (what the equivalence tests compare)
            out = self.talker.model(inputs_embeds=inputs, past_key_values=cache, use_cache=True)
        else:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self.talker.model(
                inputs_embeds=inputs,
                attention_mask=mask,
                past_key_values=cache,
                use_cache=True,
                position_ids=positions.unsqueeze(0).expand(3, -1, -1),
            )
            padding = (mask == 0)[:, None, :, None]
            for layer in cache.layers:  # padding never counts, whatever was computed there
                layer.keys = layer.keys.masked_fill(padding, 0)
                layer.values = layer.values.masked_fill(padding, 0)
        hidden = out.last_hidden_state[:, -1:]
        tokens, finite = self._choose(hidden[:, -1], [[] for _ in prompts], [0] * len(prompts))
        rows = [
            BatchRow(
                prompt=prompt,
                max_frames=max_frames,
                should_stop=should_stop or (lambda: False),
                position=length,
                token=tokens[i],
                hidden=hidden[i : i + 1],
            )
            for i, ((prompt, max_frames, should_stop), length) in enumerate(zip(entries, lengths))
        ]
        _mark_failed(rows, finite)
        self._merge(cache, mask)
        self.rows.extend(rows)
        return rows

    @torch.inference_mode()
    def step(self) -> tuple[list[tuple[BatchRow, torch.Tensor]], list[BatchRow]]:
        """One frame for every row. Returns (row, codes (16,)) for each frame made, and the
        rows that finished (they have left the batch); a finished row with ``error`` set failed."""
        finished = [r for r in self.rows if r.error is not None or int(r.token) == self.eos_id or r.should_stop()]
        self._drop(finished)
        if not self.rows:
            return [], finished
        for row in self.rows:
            row.history.append(int(row.token))
        hidden = torch.cat([r.hidden for r in self.rows], dim=0)
        tokens = torch.stack([r.token for r in self.rows])
        codes, embeds, finite = fill_codebooks(self.talker, self.params, hidden, tokens)
        _mark_failed(self.rows, finite)
        made = []
        for i, row in enumerate(self.rows):
            if row.error is None:
                row.frames_made += 1
                made.append((row, codes[i]))
        going_on = [r.error is None and r.frames_made < r.max_frames for r in self.rows]
        keep = [i for i, on in enumerate(going_on) if on]
        done = [r for r, on in zip(self.rows, going_on) if not on]
        finished += done
        self._drop(done)
        if self.rows:
            self._talker_step(embeds[keep])
        return made, finished

    def _talker_step(self, embeds: torch.Tensor) -> None:
        """Advance the talker one position for every row (``embeds``: their last frames)."""
        rows = self.rows
        step_input = embeds.sum(1, keepdim=True)
        text = []
        for row in rows:
            trailing, frame = row.prompt.trailing_text, row.frames_made - 1
            text.append(trailing[:, frame : frame + 1] if frame < trailing.shape[1] else row.prompt.tts_pad)
        step_input = step_input + torch.cat(text, dim=0)
        length = self.mask.shape[1]
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(rows), 1)], dim=1)
        positions = torch.tensor([r.position for r in rows], device=step_input.device).view(1, -1, 1)
        out = self.talker.model(
            inputs_embeds=step_input,
            attention_mask=self.mask,
            past_key_values=self.cache,
            use_cache=True,
            position_ids=positions.expand(3, -1, -1),
            cache_position=torch.tensor([length], device=step_input.device),
        )
        hidden = out.last_hidden_state[:, -1:]
        tokens, finite = self._choose(hidden[:, -1], [r.history for r in rows], [r.frames_made for r in rows])
        for i, row in enumerate(rows):
            row.position += 1
            row.hidden = hidden[i : i + 1]
            row.token = tokens[i]
        _mark_failed(rows, finite)

    def _choose(self, hidden: torch.Tensor, histories: list[list[int]], frames: list[int]):
        """hidden (B, D) -> (next first-codebook token per row, whether each row's logits were
        finite); the rules depend on each row's history."""
        logits, finite = _finite_rows(self.talker.codec_head(hidden))
        scores = [
            self.rules.apply(
                logits[i : i + 1],
                torch.tensor([history], dtype=torch.long, device=logits.device).view(1, -1),
                frame,
                self.params.repetition_penalty,
            )
            for i, (history, frame) in enumerate(zip(histories, frames))
        ]
        return self.params.talker.choose(torch.cat(scores, dim=0)), finite

    def _merge(self, cache: DynamicCache, new_mask: torch.Tensor) -> None:
        length = new_mask.shape[1]
        if self.cache is None or not self.rows:
            self.cache, self.mask = cache, new_mask
            return
        current = self.mask.shape[1]
        target = max(current, length)
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, target), _left_pad(theirs.keys, target)], dim=0)
            mine.values = torch.cat([_left_pad(mine.values, target), _left_pad(theirs.values, target)], dim=0)
        self.mask = torch.cat([_left_pad(self.mask, target), _left_pad(new_mask, target)], dim=0)

    def remove(self, row: BatchRow) -> None:
        self._drop([row])

    def _drop(self, leaving: list[BatchRow]) -> None:
        if not leaving:
            return
        keep = [i for i, r in enumerate(self.rows) if r not in leaving]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self._trim()

    def _trim(self) -> None:
        """Drop the leading cache columns that are padding for every remaining row, so the
        cache never holds more positions than its longest row needs (rows are left-padded:
        each row's real positions are the last ones)."""
        start = int(self.mask.any(dim=0).long().argmax())
        if start == 0:
            return
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, start:]
            layer.values = layer.values[:, :, start:]

    @property
    def cache_length(self) -> int:
        """Positions the batch's talker cache holds per row (0 when empty)."""
        return 0 if self.mask is None else int(self.mask.shape[1])


def _finite_rows(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits -> (logits with each non-finite row zeroed, which rows were finite).
    Sampling from a NaN row would fail the whole batch (and on CUDA poison the device)."""
    finite = torch.isfinite(logits).all(dim=-1)
    return torch.where(finite[:, None], logits, torch.zeros_like(logits)), finite


def _mark_failed(rows: list[BatchRow], finite: torch.Tensor) -> None:
    if bool(finite.all()):  # one check per call; the usual case costs nothing more
        return
    for row, ok in zip(rows, finite.tolist()):
        if not ok and row.error is None:
            row.error = GenerationError(NON_FINITE)


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the sequence axis (-2 for K/V, -1 for masks) on the left to ``length``."""
    axis = -1 if t.dim() == 2 else -2
    missing = length - t.shape[axis]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], dim=axis)


def fill_codebooks(talker, params: SamplingParams, hidden: torch.Tensor, first: torch.Tensor):
    """Codebooks 2..16 for one frame of each row: ``hidden`` (B, 1, D) is the talker's last
    hidden state, ``first`` (B,) the first-codebook tokens. Returns codes (B, 16), their
    input embeddings (B, 16, D) and whether each row's logits stayed finite (B,). Rows run
    in lock-step, so no padding is needed."""
    predictor = talker.code_predictor
    first_embed = talker.get_input_embeddings()(first.view(-1, 1))
    embeds = [first_embed]
    codes = [first.view(-1)]
    cache = DynamicCache()
    step_input = torch.cat([hidden, first_embed], dim=1)
    all_finite = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)
    for group in range(talker.config.num_code_groups - 1):
        out = predictor.model(
            inputs_embeds=predictor.small_to_mtp_projection(step_input), past_key_values=cache, use_cache=True
        )
        logits, finite = _finite_rows(predictor.lm_head[group](out.last_hidden_state[:, -1]).float())
        all_finite &= finite
        code = params.predictor.choose(logits)
        codes.append(code)
        step_input = predictor.model.get_input_embeddings()[group](code.view(-1, 1))
        embeds.append(step_input)
    return torch.stack(codes, dim=1), torch.cat(embeds, dim=1), all_finite
