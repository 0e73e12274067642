"""Incremental waveform decoding through the causal 12 Hz codec decoder.

Frames are decoded in chunks; each chunk is decoded together with up to ``left_context``
earlier frames, whose samples are then dropped (the package's ``chunked_decode`` works the
same way). A small first chunk gets audio out early; later chunks are larger, which costs
less decoder work per frame.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLES_PER_FRAME = 1920


class StreamingDecoder:
    def __init__(
        self,
        tts,
        first_chunk: int = 3,
        chunk: int = 12,
        left_context: int = 25,
        context_codes: torch.Tensor | None = None,
    ):
        """``context_codes`` (R, 16): frames heard before this stream (the reference in
        in-context cloning); they condition the first chunks but are not output."""
        self.decoder = tts.model.speech_tokenizer.model.decoder
        self.first_chunk = first_chunk
        self.chunk = chunk
        self.left_context = left_context
        self.history: list[torch.Tensor] = []
        if context_codes is not None and len(context_codes):
            self.history = list(context_codes[-left_context:])
        self.pending: list[torch.Tensor] = []
        self.emitted_chunks = 0

    def _target(self) -> int:
        return self.first_chunk if self.emitted_chunks == 0 else self.chunk

    def push(self, frame: torch.Tensor) -> np.ndarray | None:
        """Add one frame (16 codes); returns audio when a chunk is complete."""
        self.pending.append(frame)
        if len(self.pending) >= self._target():
            return self._decode()
        return None

    def flush(self) -> np.ndarray | None:
        return self._decode() if self.pending else None

    @torch.inference_mode()
    def _decode(self) -> np.ndarray:
        context = self.history[-self.left_context:] if self.left_context else []
        codes = torch.stack(context + self.pending).T.unsqueeze(0)  # (1, 16, frames)
        wav = self.decoder(codes.clamp(min=0))[0, 0]
        audio = wav[len(context) * SAMPLES_PER_FRAME:].float().cpu().numpy()
        self.history = (context + self.pending)[-max(self.left_context, 1):]
        self.pending = []
        self.emitted_chunks += 1
        return audio
