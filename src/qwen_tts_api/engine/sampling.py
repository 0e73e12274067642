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

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (B, V) -> token ids (B,)."""
        if not self.do_sample:
            return scores.argmax(dim=-1)
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            # Only the k best can be drawn: work on those (sorted, best first) alone.
            best, ids = torch.topk(scores, self.top_k, dim=-1)
            return ids.gather(-1, draw(_nucleus(best, self.top_p).softmax(dim=-1)).unsqueeze(-1)).squeeze(-1)
        if self.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True, dim=-1)
            return order.gather(-1, draw(_nucleus(ordered, self.top_p).softmax(dim=-1)).unsqueeze(-1)).squeeze(-1)
        return draw(scores.softmax(dim=-1))


def _nucleus(ordered: torch.Tensor, top_p: float) -> torch.Tensor:
    """Scores sorted best first -> the same with everything past the top-p mass removed
    (the token that crosses the threshold stays, as in Hugging Face's TopPLogitsWarper)."""
    if top_p >= 1.0:
        return ordered
    probs = ordered.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the better tokens
    return ordered.masked_fill(before >= top_p, float("-inf"))


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row from probs (B, V), by inverting the cumulative distribution
    (``torch.multinomial`` costs ten times as much per call on a CPU). A token of
    probability zero is never drawn: the search finds the first cumulative sum above the
    uniform draw, and a draw that rounds past the total falls back to the likeliest token."""
    cumulative = probs.cumsum(dim=-1)
    uniform = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cumulative.dtype) * cumulative[:, -1:]
    tokens = torch.searchsorted(cumulative, uniform, right=True).clamp_(max=probs.shape[-1] - 1)
    possible = probs.gather(-1, tokens) > 0
    return torch.where(possible, tokens, probs.argmax(dim=-1, keepdim=True)).squeeze(-1)


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
