"""Token choice for the talker and code predictor, with the package's defaults.

Mirrors what Hugging Face ``generate`` does for these models: repetition penalty over the
first-codebook tokens generated so far, suppressed control tokens, end-of-speech blocked
for the first two frames, then temperature / top-k / top-p sampling (or argmax when
sampling is off).
"""

from __future__ import annotations

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

    def choose(self, scores: torch.Tensor, generators: list[torch.Generator | None] | None = None) -> torch.Tensor:
        """scores (B, V) -> token ids (B,); row i draws from ``generators[i]`` (None: torch's own)."""
        if not self.do_sample:
            return scores.argmax(dim=-1)
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            # Only the k best can be drawn: work on those (sorted, best first) alone.
            best, ids = torch.topk(scores, self.top_k, dim=-1)
            picked = draw(_nucleus(best, self.top_p).softmax(dim=-1), generators)
            return ids.gather(-1, picked.unsqueeze(-1)).squeeze(-1)
        if self.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True, dim=-1)
            picked = draw(_nucleus(ordered, self.top_p).softmax(dim=-1), generators)
            return order.gather(-1, picked.unsqueeze(-1)).squeeze(-1)
        return draw(scores.softmax(dim=-1), generators)


def choose_rows(
    scores: torch.Tensor, samplers: list[TokenSampler], generators: list[torch.Generator | None]
) -> torch.Tensor:
    """Each row of scores (B, V) with its own sampler and generator: one call for them all
    when they share a sampler (the usual case: only the uniform draws are per row)."""
    if all(s == samplers[0] for s in samplers):
        return samplers[0].choose(scores, generators)
    return torch.cat([s.choose(scores[i : i + 1], [g]) for i, (s, g) in enumerate(zip(samplers, generators))])


def _nucleus(ordered: torch.Tensor, top_p: float) -> torch.Tensor:
    """Scores sorted best first -> the same with everything past the top-p mass removed
    (the token that crosses the threshold stays, as in Hugging Face's TopPLogitsWarper)."""
    if top_p >= 1.0:
        return ordered
    probs = ordered.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the better tokens
    return ordered.masked_fill(before >= top_p, float("-inf"))


def draw(probs: torch.Tensor, generators: list[torch.Generator | None] | None = None) -> torch.Tensor:
    """One token per row from probs (B, V), by inverting the cumulative distribution
    (``torch.multinomial`` costs ten times as much per call on a CPU). A token of
    probability zero is never drawn: the search finds the first cumulative sum above the
    uniform draw, and a draw that rounds past the total falls back to the likeliest token."""
    cumulative = probs.cumsum(dim=-1)
    uniform = _uniform(probs.shape[0], generators, cumulative) * cumulative[:, -1:]
    tokens = torch.searchsorted(cumulative, uniform, right=True).clamp_(max=probs.shape[-1] - 1)
    possible = probs.gather(-1, tokens) > 0
    return torch.where(possible, tokens, probs.argmax(dim=-1, keepdim=True)).squeeze(-1)


def _uniform(rows: int, generators: list[torch.Generator | None] | None, like: torch.Tensor) -> torch.Tensor:
    """(rows, 1) uniform draws: one call from torch's generator, or one per row from each
    row's own (a seeded request's draws never depend on its neighbours)."""
    if generators is None or all(g is None for g in generators):
        return torch.rand(rows, 1, device=like.device, dtype=like.dtype)
    return torch.cat([torch.rand(1, 1, device=like.device, dtype=like.dtype, generator=g) for g in generators])


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
    """The talker's per-step logits rules for one model's vocabulary."""

    def __init__(self, vocab_size: int, eos_id: int, device: torch.device):
        self.eos_id = eos_id
        # The top 1024 ids are control tokens (languages, speakers...), never spoken, except end-of-speech.
        self.suppressed = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.suppressed[vocab_size - 1024 :] = True
        self.suppressed[eos_id] = False

    def apply(self, logits: torch.Tensor, history: torch.Tensor, frame: int, penalty: float) -> torch.Tensor:
        """logits (B, V) float32; history (B, n) first-codebook ids already generated."""
        scores = logits.float()
        if frame < MIN_FRAMES_BEFORE_EOS:
            scores[:, self.eos_id] = float("-inf")
        if penalty != 1.0 and history.shape[1]:
            seen = torch.gather(scores, 1, history)
            seen = torch.where(seen < 0, seen * penalty, seen / penalty)
            scores = scores.scatter(1, history, seen)
        return scores.masked_fill(self.suppressed, float("-inf"))
