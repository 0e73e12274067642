"""One request's codec frames through ``FrameBatch`` with a single row, for the tests that
compare our step with the package's (the server itself adds rows through the runner)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from qwen_tts_api.engine.generation.batching import FrameBatch
from qwen_tts_api.engine.generation.prompt import TalkerPrompt
from qwen_tts_api.engine.generation.sampling import SamplingParams


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
