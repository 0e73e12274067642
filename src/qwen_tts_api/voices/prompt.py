"""What a cloned voice is to the Base model: a speaker embedding from reference audio and,
for in-context cloning, the reference's codec frames and transcript. Saved voices store
one; the engine computes them (``engine/generation/clone.py``) and speaks with them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClonePrompt:
    speaker_embedding: torch.Tensor  # (D,)
    reference_codes: torch.Tensor | None = None  # (T, 16): in-context cloning only
    reference_text: str | None = None  # the transcript that goes with reference_codes

    @classmethod
    def from_embedding(cls, values: list[float]) -> ClonePrompt:
        """A voice from a raw x-vector (vLLM-Omni's ``speaker_embedding``)."""
        return cls(torch.tensor(values, dtype=torch.float32))

    @property
    def in_context(self) -> bool:
        return self.reference_codes is not None
