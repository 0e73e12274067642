"""One request's codec frames, yielded as soon as each exists.

A convenience over ``FrameBatch`` with a single row, the path the server's scheduler runs:
per frame the talker runs once and the code predictor fills codebooks 2..16 in a direct
loop (the package runs a whole Hugging Face ``generate`` for that on every frame).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .batching import FrameBatch
from .prompt import TalkerPrompt
from .sampling import SamplingParams


class FrameGenerator:
    def __init__(
        self,
        tts,
        prompt: TalkerPrompt,
        params: SamplingParams,
        max_frames: int,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.batch = FrameBatch(tts, params)
        self.prompt = prompt
        self.max_frames = max_frames
        self.should_stop = should_stop

    def __iter__(self) -> Iterator[torch.Tensor]:
        row = self.batch.add(self.prompt, self.max_frames, self.should_stop)
        while len(self.batch):
            made, _ = self.batch.step()
            for _, codes in made:
                yield codes
        if row.error is not None:
            raise row.error
