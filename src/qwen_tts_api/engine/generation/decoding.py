"""Incremental waveform decoding through the causal 12 Hz codec decoder, exactly.

The decoder is causal all the way through: stride-1 convolutions padded on the left,
transposed convolutions whose outputs overlap only their neighbour, and sliding-window
attention. So instead of re-decoding earlier frames as context, every layer keeps the
state it needs between chunks: each convolution the last ``(kernel - 1) * dilation``
inputs it saw, each transposed convolution its last inputs, and the transformer a KV
cache. Chunk by chunk, the output is the one-pass decode, and each frame is decoded once.

The first chunk is small so audio starts early; later chunks double in size up to
``max_chunk`` to keep the per-call overhead low.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import DynamicCache

MATRIX = "_qwen_tts_api_matrix"  # a transposed convolution's weight as a matrix (see _overlap_add)


class _LayerStates:
    """Left context per convolution module, created as zeros (the original zero padding)."""

    def __init__(self) -> None:
        self._tails: dict[int, torch.Tensor] = {}

    def conv(self, module, x: torch.Tensor) -> torch.Tensor:
        """A stride-1 causal convolution (``Qwen3TTSTokenizerV2CausalConvNet``)."""
        need = module.kernel_size - 1  # the module's own left padding
        if need == 0:
            return module.conv(x)
        tail = self._tails.get(id(module))
        if tail is None:
            tail = x.new_zeros(x.shape[0], x.shape[1], need)
        joined = torch.cat([tail, x], dim=-1)
        self._tails[id(module)] = joined[..., -need:]
        return module.conv(joined)

    def transposed(self, module, x: torch.Tensor) -> torch.Tensor:
        """A causal transposed convolution: outputs of an input overlap the next inputs' span."""
        conv = module.conv
        stride, kernel = conv.stride[0], conv.kernel_size[0]
        keep = math.ceil(kernel / stride) - 1
        if keep == 0:
            return module(x)
        tail = self._tails.get(id(module))
        if tail is None:
            tail = x.new_zeros(x.shape[0], x.shape[1], keep)
        joined = torch.cat([tail, x], dim=-1)
        self._tails[id(module)] = joined[..., -keep:]
        if kernel == 2 * stride and not conv.padding[0] and conv.groups == 1:
            return self._overlap_add(conv, joined)
        out = conv(joined)
        return out[..., keep * stride : (keep + x.shape[-1]) * stride]

    def _overlap_add(self, conv, joined: torch.Tensor) -> torch.Tensor:
        """The codec's transposed convolutions (kernel twice the stride) as one matrix product
        and an overlap-add: each input frame makes two strides of output, the second of which
        lands on the next frame's first. PyTorch runs ConvTranspose1d without oneDNN on a CPU;
        the product runs in BLAS. Same output, up to the order of float sums."""
        weight = getattr(conv, MATRIX, None)
        if weight is None:  # (in, out, 2s) -> (out * 2s, in), once per model: kept on the module
            weight = conv.weight.detach().permute(1, 2, 0).reshape(-1, conv.weight.shape[0]).contiguous()
            setattr(conv, MATRIX, weight)
        stride, batch, frames = conv.stride[0], joined.shape[0], joined.shape[-1]
        spans = torch.matmul(weight, joined).view(batch, -1, 2 * stride, frames)
        out = spans[:, :, :stride, 1:] + spans[:, :, stride:, :-1]  # (B, out, s, frames - 1)
        out = out.transpose(2, 3).reshape(batch, out.shape[1], -1)
        return out if conv.bias is None else out + conv.bias[None, :, None]


def snake_beta(module, x: torch.Tensor) -> torch.Tensor:
    """The codec's SnakeBeta activation, x + sin²(αx) / β, as the package computes it but in
    place on one buffer: at 24 kHz its tensors are the decoder's largest, and the package's
    form makes five of them per call."""
    alpha = module.alpha.exp()[None, :, None]
    inverse_beta = 1.0 / (module.beta.exp() + module.no_div_by_zero)[None, :, None]
    out = x * alpha
    out.sin_()
    out.mul_(out).mul_(inverse_beta)
    return out.add_(x)


@dataclass(frozen=True)
class DecoderContext:
    """The decoder's state after frames heard before a stream (the reference in in-context
    cloning), computed once and shared by every stream that continues from it (each text
    segment of a request). Their audio is never output: the package cuts it off too."""

    tails: dict[int, torch.Tensor]
    cache: DynamicCache
    position: int

    @classmethod
    def prime(cls, tts, codes: torch.Tensor) -> DecoderContext:
        """Run ``codes`` (R, 16) through the decoder and keep the state it leaves."""
        decoder = StreamingDecoder(tts)
        decoder._run(codes)
        return cls(dict(decoder._states._tails), decoder._cache, decoder._position)


class StreamingDecoder:
    def __init__(self, tts, first_chunk: int = 3, max_chunk: int = 48, context: DecoderContext | None = None):
        """``context``: continue from that state instead of silence (it is not modified)."""
        self.decoder = tts.model.speech_tokenizer.model.decoder
        self.next_chunk = first_chunk
        self.max_chunk = max(max_chunk, first_chunk)
        self.pending: list[torch.Tensor] = []
        self._states = _LayerStates()
        self._cache = DynamicCache(config=self.decoder.pre_transformer.config)
        self._position = 0
        if context is not None:
            # Tails are replaced, never written in place, so sharing them is safe; the KV cache is copied.
            self._states._tails = dict(context.tails)
            with torch.inference_mode():
                self._cache = copy.deepcopy(context.cache)
            self._position = context.position

    def push(self, frame: torch.Tensor) -> np.ndarray | None:
        """Add one frame (16 codes); returns audio when a chunk is complete."""
        self.pending.append(frame)
        if len(self.pending) >= self.next_chunk:
            self.next_chunk = min(self.next_chunk * 2, self.max_chunk)
            return self._flush_pending()
        return None

    def flush(self) -> np.ndarray | None:
        return self._flush_pending() if self.pending else None

    def _flush_pending(self) -> np.ndarray:
        frames, self.pending = torch.stack(self.pending), []
        return self._run(frames).float().cpu().numpy()

    def _run(self, frames: torch.Tensor) -> torch.Tensor:
        """Decode (n, 16) codes continuing from the state; returns n * 1920 samples."""
        return self._decode(frames.T.unsqueeze(0))[0]

    @torch.inference_mode()
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, 16, n) codes -> (B, n * 1920) samples. The state follows the batch: B streams
        that started together can be decoded in one call (used by bench/components.py)."""
        dec, states = self.decoder, self._states
        codes = codes.clamp(min=0)
        n = codes.shape[-1]
        hidden = dec.quantizer.decode(codes)
        hidden = states.conv(dec.pre_conv, hidden).transpose(1, 2)
        positions = torch.arange(self._position, self._position + n, device=hidden.device)
        self._position += n
        hidden = dec.pre_transformer(
            inputs_embeds=hidden,
            past_key_values=self._cache,
            use_cache=True,
            cache_position=positions,
            position_ids=positions.unsqueeze(0),
        ).last_hidden_state.permute(0, 2, 1)
        for transposed, convnext in dec.upsample:
            hidden = states.transposed(transposed, hidden)
            hidden = self._convnext(convnext, hidden)
        first, *blocks, act, last = dec.decoder
        wav = states.conv(first, hidden)
        for block in blocks:
            snake, transposed, *units = block.block
            wav = states.transposed(transposed, snake_beta(snake, wav))
            for unit in units:
                inner = states.conv(unit.conv1, snake_beta(unit.act1, wav))
                wav = states.conv(unit.conv2, snake_beta(unit.act2, inner)).add_(wav)
        wav = states.conv(last, snake_beta(act, wav))
        return wav.clamp(min=-1, max=1)[:, 0]

    def _convnext(self, block, x: torch.Tensor) -> torch.Tensor:
        h = self._states.conv(block.dwconv, x).permute(0, 2, 1)
        h = block.pwconv2(block.act(block.pwconv1(block.norm(h))))
        return x + (block.gamma * h).permute(0, 2, 1)
