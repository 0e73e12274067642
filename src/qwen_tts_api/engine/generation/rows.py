"""A batch row (one request's current segment in a model's batch) and what adds one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import GenerationError
from .prompt import TalkerPrompt
from .sampling import RowSampling

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
    seen: torch.Tensor  # (1, V) bool: the first-codebook tokens this row has made (repetition penalty)
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
    """A row to add: its prompt, frame budget, cancellation check and sampling (None: the
    batch's parameters and torch's own generator)."""

    prompt: TalkerPrompt
    max_frames: int
    should_stop: Callable[[], bool] | None = None
    sampling: RowSampling | None = None


def never() -> bool:
    return False


def mark_failed(rows: list[BatchRow], finite: torch.Tensor) -> None:
    if bool(finite.all()):  # one check per call; the usual case costs nothing more
        return
    for row, ok in zip(rows, finite.tolist()):
        if not ok and row.error is None:
            row.error = GenerationError(NON_FINITE)
