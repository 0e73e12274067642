"""The prefill of prompts that join a batch together, whole or a chunk at a time.

The prompts run through the package's own talker modules as one batch, left-padded to the
longest, each with its own positions and a mask over its padding. A prompt longer than
``chunk`` positions is prefilled in chunks, each on top of the cache the earlier ones left
(chunked prefill): between two chunks the rows already speaking can step, so they wait for
one chunk instead of a whole long prompt (an in-context clone's reference codes).

Where a prompt is cut depends on the prompt alone: chunks are counted back from its end
(where every padded row ends too), ``chunk`` positions each, the first taking what is left
over. So a row meets the same chunks alone and next to any other prompt, and a seed gives
the same audio either way. A prompt of at most ``chunk`` positions is one plain call of the
package's modules, which is what the equivalence tests compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import DynamicCache

if TYPE_CHECKING:
    from .rows import BatchRow, RowSpec


class Prefill:
    def __init__(self, model, prompts: list[torch.Tensor], chunk: int = 0):
        """``model``: the talker's decoder stack (``talker.model``); ``prompts``: each
        (1, length, D) input embeddings; ``chunk``: positions per chunk (0: whole)."""
        self.model = model
        self.chunk = chunk
        self.lengths = [p.shape[1] for p in prompts]
        self.length = max(self.lengths)  # positions of the padded batch
        device = prompts[0].device
        self.inputs = torch.cat([left_pad(p, self.length) for p in prompts], dim=0)
        self.mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        if len(prompts) > 1:  # one prompt has no padding: the plain call (what the equivalence tests compare)
            ones = [torch.ones(1, n, dtype=torch.long, device=device) for n in self.lengths]
            self.mask = torch.cat([left_pad(m, self.length) for m in ones])
            self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache()
        self.done = 0  # positions prefilled so far
        self.hidden: torch.Tensor | None = None  # (rows, 1, D) at the last position, once finished

    @property
    def finished(self) -> bool:
        return self.done == self.length

    def advance(self) -> None:
        """Prefill the next chunk of every prompt."""
        start, end = self.done, self.length
        if self.chunk > 0:  # the chunks after this one are whole; this one takes the rest
            end -= (self.length - start - 1) // self.chunk * self.chunk
        chunk = self.inputs[:, start:end]
        if self.mask is None or self.positions is None:
            out = self.model(inputs_embeds=chunk, past_key_values=self.cache, use_cache=True)
        else:
            out = self.model(
                inputs_embeds=chunk,
                attention_mask=self.mask[:, :end],  # the padding of every position so far
                past_key_values=self.cache,
                use_cache=True,
                position_ids=self.positions[:, start:end].unsqueeze(0).expand(3, -1, -1),
            )
        self.done = end
        if self.finished:
            self.hidden = out.last_hidden_state[:, -1:]

    def run(self) -> None:
        """Prefill all that is left, chunk by chunk."""
        while not self.finished:
            self.advance()

    def row_cache(self, row: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Prompt ``row``'s keys and values per layer, without its padding."""
        start = self.length - self.lengths[row]
        keys, values = [], []
        for layer in self.cache.layers:
            assert layer.keys is not None and layer.values is not None
            keys.append(layer.keys[row, :, start:])
            values.append(layer.values[row, :, start:])
        return keys, values


def left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the sequence axis (-2 for embeddings, -1 for masks) on the left to ``length``."""
    axis = -1 if t.dim() == 2 else -2
    missing = length - t.shape[axis]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], dim=axis)


@dataclass(eq=False)
class JoiningGroup:
    """Rows whose prompts are being prefilled together, by their index in the prefill."""

    prefill: Prefill
    rows: dict[int, BatchRow]


def prefill_groups(specs: Sequence[RowSpec], chunk: int) -> list[list[RowSpec]]:
    """The joining prompts in arrival order, in groups whose padded prefill (prompts x
    the longest) fits ``chunk`` positions; a longer prompt is a group of its own
    (prefilled in chunks). So a burst of prompts joining speaking rows holds a step up
    for about one chunk, as one long prompt does. A prompt's result does not depend on
    its group (the batching tests compare it alone)."""
    if not chunk:
        return [list(specs)]
    groups: list[list[RowSpec]] = []
    longest = 0
    for spec in specs:
        length = spec.prompt.prefill.shape[1]
        if groups and (len(groups[-1]) + 1) * max(longest, length) <= chunk:
            groups[-1].append(spec)
            longest = max(longest, length)
        else:
            groups.append([spec])
            longest = length
    return groups
