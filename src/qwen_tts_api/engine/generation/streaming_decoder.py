"""Incremental waveform decoding through the causal 12 Hz codec decoder, exactly.

Every layer keeps the state it needs between chunks (``codec_layers.LayerStates`` for the
convolutions, a KV cache for the sliding-window transformer), so chunk by chunk the output
is the one-pass decode and each frame is decoded once. The first chunk is small so audio
starts early; later chunks double in size up to ``max_chunk`` to keep the per-call
overhead low. A decoder's state can be read and restored (``state``, ``restore``): a
reference decoded once is shared by every segment that continues from it, and streams
decoded in one call each go on from their own row (``first_chunks.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import DynamicCache

from .codec_layers import LayerStates, image, snake_beta

TILE_FRAMES = 16  # frames of one stream the later upsampling blocks take at a time on a CPU (decode_batch)


@dataclass(frozen=True)
class DecoderState:
    """Where a decoder stands: each convolution's left context (by module), the codec
    transformer's KV cache and the frames decoded so far. Tails are replaced, never written
    in place, so states may share them; a cache is copied before it is written (``restore``)."""

    tails: dict[int, torch.Tensor]
    cache: DynamicCache
    position: int

    @classmethod
    def prime(cls, tts, codes: torch.Tensor) -> DecoderState:
        """The state after ``codes`` (R, 16) heard before a stream (the reference in
        in-context cloning), whose audio is never output (the package cuts it off too)."""
        decoder = StreamingDecoder(tts)
        decoder.run(codes)
        return decoder.state()

    @torch.inference_mode()
    def row(self, index: int) -> DecoderState:
        """One stream's state out of a batch's (a copy)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_select_indices(torch.tensor([index], device=next(iter(self.tails.values())).device))
        tails = {key: tail[index : index + 1].clone() for key, tail in self.tails.items()}
        return DecoderState(tails, cache, self.position)


@dataclass(frozen=True)
class DecodedChunk:
    """A chunk decoded elsewhere (with other streams'): its samples and the state after it."""

    samples: torch.Tensor  # (n * 1920,)
    state: DecoderState


class StreamingDecoder:
    def __init__(self, tts, first_chunk: int = 3, max_chunk: int = 48, context: DecoderState | None = None):
        """``context``: continue from that state instead of silence (it is not modified)."""
        self.decoder = tts.model.speech_tokenizer.model.decoder
        self.next_chunk = first_chunk
        self.max_chunk = max(max_chunk, first_chunk)
        self.pending: list[torch.Tensor] = []
        self._layers = LayerStates()
        self._cache = DynamicCache(config=self.decoder.pre_transformer.config)
        self._position = 0
        if context is not None:
            with torch.inference_mode():
                self.restore(DecoderState(context.tails, copy.deepcopy(context.cache), context.position))

    def state(self) -> DecoderState:
        """Its state now (not a copy: restore it into one decoder only)."""
        return DecoderState(dict(self._layers.tails), self._cache, self._position)

    def restore(self, state: DecoderState) -> None:
        """Go on from ``state`` (its cache is taken over, not copied)."""
        self._layers.tails = dict(state.tails)
        self._cache = state.cache
        self._position = state.position

    @property
    def fresh(self) -> bool:
        """Whether it has decoded nothing yet and starts from silence."""
        return self._position == 0 and not self._layers.tails

    def push(self, frame: torch.Tensor) -> np.ndarray | None:
        """Add one frame (16 codes); returns audio when a chunk is complete."""
        self.pending.append(frame)
        if len(self.pending) >= self.next_chunk:
            frames, self.pending = torch.stack(self.pending), []
            return self.decode_chunk(frames)
        return None

    def decode_chunk(self, frames: torch.Tensor, decoded: DecodedChunk | None = None) -> np.ndarray:
        """A whole chunk (n, 16) at once, nothing pending; the next chunk doubles.
        ``decoded``: its samples and state, decoded with other streams' (a fresh decoder)."""
        assert not self.pending
        self.next_chunk = min(self.next_chunk * 2, self.max_chunk)
        if decoded is not None and self.fresh:
            self.restore(decoded.state)
            samples = decoded.samples
        else:
            samples = self.run(frames)
        return samples.float().cpu().numpy()

    def flush(self) -> np.ndarray | None:
        """What is pending, decoded now (the chunk size stays)."""
        if not self.pending:
            return None
        frames, self.pending = torch.stack(self.pending), []
        return self.run(frames).float().cpu().numpy()

    def run(self, frames: torch.Tensor) -> torch.Tensor:
        """Decode (n, 16) codes continuing from the state; returns n * 1920 samples."""
        return self.decode_batch(frames.T.unsqueeze(0))[0]

    @torch.inference_mode()
    def decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, 16, n) codes -> (B, n * 1920) samples. The state follows the batch: B streams
        that started together are decoded in one call (``first_chunks.py``, the benchmarks)."""
        dec, states = self.decoder, self._layers
        codes = codes.clamp(min=0)
        n = codes.shape[-1]
        hidden = image(dec.quantizer.decode(codes))
        hidden = states.conv(dec.pre_conv, hidden)[:, :, 0].transpose(1, 2)
        positions = torch.arange(self._position, self._position + n, device=hidden.device)
        self._position += n
        hidden = dec.pre_transformer(
            inputs_embeds=hidden,
            past_key_values=self._cache,
            use_cache=True,
            cache_position=positions,
            position_ids=positions.unsqueeze(0),
        ).last_hidden_state
        hidden = image(hidden.transpose(1, 2))
        for transposed, convnext in dec.upsample:
            hidden = states.transposed(transposed, hidden)
            hidden = self._convnext(convnext, hidden)
        first, *blocks, act, last = dec.decoder
        wav = self._block(blocks[0], states.conv(first, hidden))
        # On a CPU the later blocks run a few frames at a time so their 24 kHz tensors stay in
        # cache; the first block reads its large weights once a chunk, so it takes the whole
        # chunk (docs/BENCHMARKS.md, "The codec on a CPU"). A GPU takes it whole.
        frames = max(1, TILE_FRAMES // wav.shape[0]) if wav.device.type == "cpu" else n  # a batch: fewer
        step = wav.shape[-1] // n * frames
        tiles = []
        for start in range(0, wav.shape[-1], step):
            tile = wav[..., start : start + step]
            for block in blocks[1:]:
                tile = self._block(block, tile)
            tiles.append(states.conv(last, snake_beta(act, tile)).clamp_(min=-1, max=1)[:, 0, 0])
        return torch.cat(tiles, dim=-1) if len(tiles) > 1 else tiles[0]

    def _block(self, block, wav: torch.Tensor) -> torch.Tensor:
        """One upsampling block of the waveform decoder: SnakeBeta, a transposed convolution,
        three residual units (dilated convolutions)."""
        states = self._layers
        snake, transposed, *units = block.block
        wav = states.transposed(transposed, snake_beta(snake, wav))
        for unit in units:
            inner = states.conv(unit.conv1, snake_beta(unit.act1, wav))
            wav = states.conv(unit.conv2, snake_beta(unit.act2, inner)).add_(wav)
        return wav

    def _convnext(self, block, x: torch.Tensor) -> torch.Tensor:
        h = self._layers.conv(block.dwconv, x)[:, :, 0].transpose(1, 2)  # (B, L, C)
        h = block.pwconv2(block.act(block.pwconv1(block.norm(h))))
        return x + image((block.gamma * h).transpose(1, 2))
