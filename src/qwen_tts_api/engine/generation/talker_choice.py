"""The talker's next first-codebook token for each row."""

from __future__ import annotations

import torch

from .rows import BatchRow
from .sampling import (
    MIN_FRAMES_BEFORE_EOS,
    ChoiceTable,
    SamplingParams,
    TalkerLogits,
    choose,
    choose_among_best,
    uniform_draws,
)
from .transformer import per_row


class TalkerChoice:
    """The talker's next first-codebook token for each row: its output head, the logits rules
    (``TalkerLogits``) and the row's own sampling, from tensors alone (``next_tokens``), so
    the compiled talker step takes it into its graph."""

    def __init__(self, talker, params: SamplingParams):
        tcfg = talker.config
        self.head = talker.codec_head
        self.device = talker.device
        self.rules = TalkerLogits(tcfg.vocab_size, tcfg.codec_eos_token_id, talker.device)
        self.choices = ChoiceTable(talker.device, tcfg.vocab_size, params.talker)
        self._penalties: dict[tuple[float, ...], torch.Tensor] = {}

    def nothing_seen(self) -> torch.Tensor:
        return torch.zeros((1, self.rules.vocab_size), dtype=torch.bool, device=self.device)

    def narrow(self, rows: list[BatchRow]) -> bool:
        """Whether every row's choice has the model's own width (what the compiled step takes)."""
        return self.choices.of([r.sampling.params.talker for r in rows]).width == self.choices.narrow

    def inputs(self, rows: list[BatchRow], drawing: list[BatchRow]) -> tuple[torch.Tensor, ...]:
        """``next_tokens``' inputs after the hidden states, for ``rows``; only the ``drawing``
        rows draw from their generators (the others' tokens are thrown away, and a seeded row
        that waits must not use up its draws)."""
        samplings = [r.sampling for r in rows]
        penalties = tuple(s.params.repetition_penalty for s in samplings)
        penalty = self._penalties.get(penalties)
        if penalty is None:
            if len(self._penalties) >= 64:
                self._penalties.clear()
            penalty = self._penalties[penalties] = torch.tensor(penalties, device=self.device).view(-1, 1)
        early = torch.tensor([r.frames_made < MIN_FRAMES_BEFORE_EOS for r in rows], device=self.device).view(-1, 1)
        seen = torch.cat([r.seen for r in rows])
        if len(drawing) == len(rows):
            uniform = uniform_draws(len(rows), 1, [s.generator for s in samplings], self.device)
        else:
            uniform = torch.zeros((len(rows), 1), device=self.device)
        if drawing and len(drawing) < len(rows):
            index = [rows.index(r) for r in drawing]
            uniform[index] = uniform_draws(len(drawing), 1, [r.sampling.generator for r in drawing], self.device)
        choices = self.choices.of([s.params.talker for s in samplings])
        return (seen, early, penalty, uniform, *choices.tensors())

    def next_tokens(
        self,
        hidden: torch.Tensor,
        seen: torch.Tensor,
        early: torch.Tensor,
        penalty: torch.Tensor,
        uniform: torch.Tensor,
        *choices: torch.Tensor,
        width: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, D) -> (next token per row, whether each row's logits were finite), for
        rows that all look at ``width`` tokens."""
        logits, scores = self._scores(hidden, seen, early, penalty)
        tokens = choose_among_best(scores, choices, uniform, width)
        return tokens, _finite_rows(logits)

    def choose(
        self, hidden: torch.Tensor, rows: list[BatchRow], uniform: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``next_tokens`` for any rows (they may differ in width), eagerly; ``uniform``: the
        rows' draws when they were drawn already (for a compiled step that failed)."""
        seen, early, penalty, drawn, *_ = self.inputs(rows, [] if uniform is not None else rows)
        uniform = drawn if uniform is None else uniform
        logits, scores = self._scores(hidden, seen, early, penalty)
        choices = self.choices.of([r.sampling.params.talker for r in rows])
        return choose(scores, choices, uniform), _finite_rows(logits)

    def _scores(self, hidden, seen, early, penalty) -> tuple[torch.Tensor, torch.Tensor]:
        logits = per_row(hidden, self.head.weight, self.head.bias)
        return logits, self.rules.apply(logits, seen, early, penalty)


def _finite_rows(logits: torch.Tensor) -> torch.Tensor:
    """(B, V) logits -> whether each row is finite. A non-finite row still yields some
    in-range token (argmax and the inverse-CDF draw never fail on NaN); it is thrown away
    with its row."""
    return torch.isfinite(logits).all(dim=-1)
