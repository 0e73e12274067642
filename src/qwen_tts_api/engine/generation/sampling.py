"""Token choice for the talker and code predictor, with the package's defaults.

Mirrors what Hugging Face ``generate`` does for these models: repetition penalty over the
first-codebook tokens generated so far, suppressed control tokens, end-of-speech blocked
for the first two frames, then temperature / top-k / top-p sampling (or argmax when
sampling is off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# The package's fallbacks when generate_config.json leaves a value out.
_DEFAULTS: dict[str, Any] = dict(
    do_sample=True,
    top_k=50,
    top_p=1.0,
    temperature=0.9,
    repetition_penalty=1.05,
    subtalker_dosample=True,
    subtalker_top_k=50,
    subtalker_top_p=1.0,
    subtalker_temperature=0.9,
)
MIN_FRAMES_BEFORE_EOS = 2


@dataclass(frozen=True)
class TokenSampler:
    do_sample: bool
    top_k: int
    top_p: float
    temperature: float

    def choose(self, scores: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """scores (B, V) -> token ids (B,); ``uniform`` (B, 1): each row's draw in [0, 1)
        (None: drawn here from torch's generator)."""
        rows = ChoiceTable(scores.device, scores.shape[-1], self).of([self] * scores.shape[0])
        if uniform is None:
            uniform = uniform_draws(scores.shape[0], 1, [None] * scores.shape[0], scores.device)
        return choose(scores, rows, uniform)


# A RowChoices' tensors in a fixed order: greedy, temperature, top_k, top_p (each (B, 1)).
ChoiceTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class RowChoices:
    """Each row's sampling parameters as (B, 1) tensors, so that rows with different settings
    are chosen in one call, and in one compiled graph (``compiled.CompiledFrame``) that never
    depends on what a request asked for. ``widths``: how many of each row's best tokens its
    choice looks at (``ChoiceTable``)."""

    greedy: torch.Tensor  # bool: argmax instead of a draw
    temperature: torch.Tensor  # float32
    top_k: torch.Tensor  # int64; 0 (no top-k) becomes the vocabulary's size
    top_p: torch.Tensor  # float32
    widths: tuple[int, ...]
    sampled: bool = True  # whether any row draws (else every row is greedy)
    nucleus: bool = True  # whether any row has a top-p below 1

    def tensors(self) -> ChoiceTensors:
        return self.greedy, self.temperature, self.top_k, self.top_p

    @property
    def width(self) -> int | None:
        """The rows' common width, or None when they differ."""
        return self.widths[0] if len(set(self.widths)) == 1 else None

    def by_width(self) -> list[tuple[int, torch.Tensor, RowChoices]]:
        """(width, the rows' indices as a tensor, their choices) for each width among the rows."""
        groups = []
        for width in set(self.widths):
            index = [i for i, w in enumerate(self.widths) if w == width]
            groups.append((width, torch.tensor(index, device=self.greedy.device), self.select(index)))
        return groups

    def select(self, index: list[int]) -> RowChoices:
        picked = torch.tensor(index, device=self.greedy.device)
        greedy, temperature, top_k, top_p = (t.index_select(0, picked) for t in self.tensors())
        widths = tuple(self.widths[i] for i in index)
        return RowChoices(greedy, temperature, top_k, top_p, widths, self.sampled, self.nucleus)


class ChoiceTable:
    """``RowChoices`` for the sampler lists a batch meets, made once each (a batch's rows
    rarely change, so a step builds no tensors for them).

    A row's choice looks at its best ``width`` tokens: the model's own top-k (``default``'s)
    for every row whose top-k is at most that, so the usual batch is one ``topk`` of a few
    dozen; all of the vocabulary (a full sort) for a row without top-k or with a larger one.
    The width depends on the row's own parameters alone, so a seeded row chooses the same
    tokens whatever its neighbours ask for."""

    def __init__(self, device: torch.device | str, vocab: int, default: TokenSampler, size: int = 64):
        self.device, self.vocab, self.size = device, vocab, size
        self.narrow = default.top_k if 0 < default.top_k < vocab else vocab
        self._made: dict[tuple[TokenSampler, ...], RowChoices] = {}

    def of(self, samplers: list[TokenSampler]) -> RowChoices:
        key = tuple(samplers)
        made = self._made.get(key)
        if made is None:
            if len(self._made) >= self.size:
                self._made.clear()
            made = self._made[key] = self._make(samplers)
        return made

    def _make(self, samplers: list[TokenSampler]) -> RowChoices:
        def column(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=self.device).view(-1, 1)

        top_k = [s.top_k if 0 < s.top_k < self.vocab else self.vocab for s in samplers]
        return RowChoices(
            greedy=column([not s.do_sample for s in samplers], torch.bool),
            temperature=column([s.temperature for s in samplers], torch.float32),
            top_k=column(top_k, torch.int64),
            top_p=column([s.top_p for s in samplers], torch.float32),
            widths=tuple(self.narrow if k <= self.narrow else self.vocab for k in top_k),
            sampled=any(s.do_sample for s in samplers),
            nucleus=any(s.top_p < 1.0 for s in samplers),
        )


def choose(scores: torch.Tensor, rows: RowChoices, uniform: torch.Tensor) -> torch.Tensor:
    """scores (B, V) float32 -> one token per row (B,): the argmax for greedy rows; for the
    others a draw (``uniform`` (B, 1)) after temperature, top-k, then top-p over what top-k
    left, as Hugging Face's warpers do. Rows of one width go through one call."""
    width, sampled, nucleus = rows.width, rows.sampled, rows.nucleus
    if width is not None:
        return choose_among_best(scores, rows.tensors(), uniform, width, sampled, nucleus)
    tokens = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
    for width, picked, some in rows.by_width():
        tokens[picked] = choose_among_best(scores[picked], some.tensors(), uniform[picked], width, sampled, nucleus)
    return tokens


def choose_among_best(
    scores: torch.Tensor, choices: Sequence[torch.Tensor], uniform: torch.Tensor, width: int, sampled=True, nucleus=True
) -> torch.Tensor:
    """``choose`` for rows that look at their best ``width`` tokens (``choices``:
    ``RowChoices.tensors()``). The same operations
    whatever the parameters' values (no branch on a tensor), so a compiler takes it whole.
    Eager callers may say that no row draws (``sampled``) or none cuts by top-p (``nucleus``)
    and skip what would change nothing; a graph always runs the whole."""
    if not sampled:
        return scores.argmax(dim=-1)
    greedy, temperature, top_k, top_p = choices
    scaled = scores / temperature
    if width < scores.shape[-1]:
        ordered, order = torch.topk(scaled, width, dim=-1)  # sorted, best first
    else:
        ordered, order = torch.sort(scaled, dim=-1, descending=True, stable=True)
    rank = torch.arange(width, device=scores.device)
    ordered = ordered.masked_fill(rank >= top_k, float("-inf"))
    if nucleus:
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the better tokens
        # The token that crosses the threshold stays (as in TopPLogitsWarper); top_p 1 cuts nothing.
        ordered = ordered.masked_fill((before >= top_p) & (top_p < 1.0), float("-inf"))
    picked = draw(ordered.softmax(dim=-1), uniform)
    drawn = order.gather(-1, picked.unsqueeze(-1)).squeeze(-1)
    return torch.where(greedy.view(-1), scores.argmax(dim=-1), drawn)


def draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row from probs (B, V), by inverting the cumulative distribution at
    ``uniform`` (B, 1) (``torch.multinomial`` costs ten times as much per call on a CPU, and
    draws on its own). A token of probability zero is never drawn: the search finds the first
    cumulative sum above the draw, and a draw that rounds past the total falls back to the
    likeliest token."""
    cumulative = probs.cumsum(dim=-1)
    target = uniform * cumulative[:, -1:]
    tokens = torch.searchsorted(cumulative, target, right=True).clamp_(max=probs.shape[-1] - 1)
    possible = probs.gather(-1, tokens) > 0
    return torch.where(possible, tokens, probs.argmax(dim=-1, keepdim=True)).squeeze(-1)


def uniform_draws(
    rows: int, count: int, generators: list[torch.Generator | None], device: torch.device | str
) -> torch.Tensor:
    """(rows, count) uniform draws in float32: one call from torch's generator when no row
    has its own, else one per row from its own generator (a seeded request's draws never
    depend on its neighbours). A frame draws all its code predictor's draws at once."""
    if all(g is None for g in generators):
        return torch.rand(rows, count, device=device)
    return torch.cat([torch.rand(1, count, device=device, generator=g) for g in generators])


@dataclass(frozen=True)
class SamplingParams:
    talker: TokenSampler
    predictor: TokenSampler
    repetition_penalty: float

    @classmethod
    def from_generate_config(cls, config: dict[str, Any] | None) -> SamplingParams:
        values = {**_DEFAULTS, **{k: v for k, v in (config or {}).items() if k in _DEFAULTS}}
        return cls(
            talker=TokenSampler(
                bool(values["do_sample"]), int(values["top_k"]), float(values["top_p"]), float(values["temperature"])
            ),
            predictor=TokenSampler(
                bool(values["subtalker_dosample"]),
                int(values["subtalker_top_k"]),
                float(values["subtalker_top_p"]),
                float(values["subtalker_temperature"]),
            ),
            repetition_penalty=float(values["repetition_penalty"]),
        )

    def overridden(
        self,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
    ) -> SamplingParams:
        """A request's own settings over the model's: ``temperature`` 0 is greedy, a positive
        one samples (even where the model's configuration is greedy). They apply to the talker
        and the code predictor alike; the repetition penalty is the talker's."""
        if temperature is None and top_p is None and top_k is None and repetition_penalty is None:
            return self

        def apply(sampler: TokenSampler) -> TokenSampler:
            return TokenSampler(
                do_sample=sampler.do_sample if temperature is None else temperature > 0,
                top_k=sampler.top_k if top_k is None else top_k,
                top_p=sampler.top_p if top_p is None else top_p,
                temperature=temperature or sampler.temperature,
            )

        penalty = self.repetition_penalty if repetition_penalty is None else repetition_penalty
        return SamplingParams(apply(self.talker), apply(self.predictor), penalty)


@dataclass(frozen=True)
class RowSampling:
    """How one request chooses its tokens: its parameters, and its own random generator when
    it asked for a seed (its draws then never depend on what else is in the batch)."""

    params: SamplingParams
    generator: torch.Generator | None = None

    @classmethod
    def seeded(cls, params: SamplingParams, seed: int | None, device) -> RowSampling:
        if seed is None:
            return cls(params)
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        return cls(params, generator)


class TalkerLogits:
    """The talker's per-step logits rules for one model's vocabulary, on tensors only (so the
    compiled talker step takes them too): end-of-speech blocked for a row's first frames, the
    repetition penalty over the first-codebook tokens a row has made, control tokens out."""

    def __init__(self, vocab_size: int, eos_id: int, device: torch.device):
        self.eos_id = eos_id
        self.vocab_size = vocab_size
        # The top 1024 ids are control tokens (languages, speakers...), never spoken, except end-of-speech.
        self.suppressed = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.suppressed[vocab_size - 1024 :] = True
        self.suppressed[eos_id] = False
        self.eos = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.eos[eos_id] = True

    def apply(
        self, logits: torch.Tensor, seen: torch.Tensor, early: torch.Tensor, penalty: torch.Tensor
    ) -> torch.Tensor:
        """logits (B, V); seen (B, V) bool: the tokens each row has made; early (B, 1) bool:
        rows that may not end yet; penalty (B, 1) float32 -> scores (B, V) float32. A penalty
        of 1 changes nothing (a float multiplied or divided by 1 is itself)."""
        scores = logits.float().masked_fill(early & self.eos, float("-inf"))
        penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
        return torch.where(seen, penalised, scores).masked_fill(self.suppressed, float("-inf"))
