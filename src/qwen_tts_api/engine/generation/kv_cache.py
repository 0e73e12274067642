"""Where the compact transformer forward (``transformer.py``) keeps keys and values.

``SlotCache`` is the talker's: one slot per batch row, each row's positions from index 0,
so rows of different lengths share a step. ``WholeCacheWriter`` writes into fixed-shape
caches, as a compiled graph needs (``compiled.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .transformer import DecoderStack


class KVWriter:
    """Where a forward pass stores each layer's new keys and values, and what it attends over."""

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class WholeCacheWriter(KVWriter):
    """Writes each row's new keys and values at its own positions and attends over the whole
    cache (the caller's mask hides what is not yet written), so that shapes do not change
    from step to step: what a compiled graph needs (``compiled.py``).

    ``positions`` (B, T): where row b's t-th new position goes."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], positions: torch.Tensor):
        self.keys, self.values, self.positions = keys, values, positions
        self.rows = torch.arange(positions.shape[0], device=positions.device)[:, None]

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = keys.shape[0]
        cached_keys, cached_values = self.keys[layer], self.values[layer]
        # (B, kv, T, hd) new entries -> indexed as (B, T, kv, hd) at [row, :, position]
        cached_keys[self.rows, :, self.positions] = keys.transpose(1, 2)
        cached_values[self.rows, :, self.positions] = values.transpose(1, 2)
        return cached_keys[:rows], cached_values[:rows]


class SlotCache(KVWriter):
    """The talker's keys and values: one slot per batch row (rows 0..B-1 use slots 0..B-1),
    each row's positions at their own indices from 0. Capacity grows in whole buckets (so
    steady state allocates nothing) and shrinks when rows that needed it have left."""

    LENGTH_STEP = 256

    def __init__(self, stack: DecoderStack):
        self.stack = stack
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.slots = 0
        self.capacity = 0
        # Set per step: which cache index each row writes, and how far rows attend.
        self._rows = torch.empty(0, dtype=torch.long)
        self._positions = torch.empty(0, dtype=torch.long)
        self._length = 0

    def reserve(self, rows: int, length: int) -> None:
        slots = max(self.slots, _bucket(rows))
        capacity = max(self.capacity, -(-length // self.LENGTH_STEP) * self.LENGTH_STEP)
        if (slots, capacity) != (self.slots, self.capacity):
            self._reallocate(slots, capacity, keep_rows=self.slots, keep_length=self.capacity)

    def shrink_to(self, rows: int, length: int) -> None:
        """Give memory back once it is more than twice what the remaining rows need."""
        if rows == 0:
            self.keys, self.values, self.slots, self.capacity = [], [], 0, 0
            return
        slots, capacity = _bucket(rows), -(-length // self.LENGTH_STEP) * self.LENGTH_STEP
        if self.slots > 2 * slots or self.capacity > 2 * capacity:
            self._reallocate(slots, capacity, keep_rows=rows, keep_length=length)

    def _reallocate(self, slots: int, capacity: int, keep_rows: int, keep_length: int) -> None:
        stack = self.stack
        shape = (slots, stack.kv_heads, capacity, stack.head_dim)
        # Zeros, not empty: masked positions still meet the values in attention (0 x NaN = NaN).
        fresh = [torch.zeros(shape, dtype=stack.dtype, device=stack.device) for _ in range(2 * len(stack.layers))]
        rows, length = min(keep_rows, slots, self.slots), min(keep_length, capacity, self.capacity)
        for new, old in zip(fresh, self.keys + self.values):
            new[:rows, :, :length] = old[:rows, :, :length]
        half = len(stack.layers)
        self.keys, self.values = fresh[:half], fresh[half:]
        self.slots, self.capacity = slots, capacity
        stack.ensure_positions(capacity)

    def load(self, slot: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Put a prefilled row (per layer (kv_heads, n, head_dim)) into ``slot`` at 0..n-1."""
        for mine, theirs in zip(self.keys + self.values, keys + values):
            mine[slot, :, : theirs.shape[1]] = theirs

    def move(self, source: int, target: int, length: int) -> None:
        for tensor in self.keys + self.values:
            tensor[target, :, :length] = tensor[source, :, :length]

    def prepare_step(self, positions: torch.Tensor, length: int) -> None:
        """Each row writes its next position (``positions`` (B,)) and attends over 0..length-1."""
        self._rows = torch.arange(positions.shape[0], device=positions.device)
        self._positions = positions
        self._length = length

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = keys.shape[0]
        cached_keys, cached_values = self.keys[layer], self.values[layer]
        cached_keys[self._rows, :, self._positions] = keys[:, :, 0]
        cached_values[self._rows, :, self._positions] = values[:, :, 0]
        return cached_keys[:rows, :, : self._length], cached_values[:rows, :, : self._length]


def _bucket(rows: int) -> int:
    """Slot counts come in powers of two (1, 2, 4, 8, 16, ...)."""
    return 1 << max(rows - 1, 0).bit_length()
