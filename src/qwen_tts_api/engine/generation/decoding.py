"""Incremental waveform decoding through the causal 12 Hz codec decoder, exactly.

The decoder is causal all the way through: stride-1 convolutions padded on the left,
transposed convolutions whose outputs overlap only their neighbour, and sliding-window
attention. So instead of re-decoding earlier frames as context, every layer keeps the
state it needs between chunks: each convolution the last ``(kernel - 1) * dilation``
inputs it saw, each transposed convolution its last inputs, and the transformer a KV
cache. Chunk by chunk, the output is the one-pass decode, and each frame is decoded once.

The first chunk is small so audio starts early; later chunks double in size up to
``max_chunk`` to keep the per-call overhead low. Streams that start together (prefilled in
one step) can decode their first chunks in one call (``FirstChunks``), where a probe found
that call's samples and state equal to lone decodes to the bit (``probe_first_chunks``).

Speed on a CPU, where this decoder is a quarter of a frame's time: the signal is held as a
one-row image in channels-last memory so that oneDNN picks its fast NHWC convolutions, the
transposed convolutions are matrix products, and the high-rate blocks run a few frames at a
time so their tensors stay in cache. On a GPU the one-row image stays in the usual (NCHW)
memory, which is how PyTorch hands the package's 1-D convolutions to cuDNN: there cuDNN's
channels-last depthwise convolution took 65 of a 48-frame chunk's 82 ms on an H200.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

log = logging.getLogger(__name__)
MATRIX = "_qwen_tts_api_transposed_rows"  # a transposed convolution's weight as a matrix (see _overlap_add)
IMAGE = "_qwen_tts_api_image"  # a convolution's weight as a one-row image's, in the device's memory format
TILE_FRAMES = 16  # frames of one stream the later upsampling blocks take at a time (see StreamingDecoder._decode)
TOGETHER = "_qwen_tts_api_first_chunks_together"  # {chunk frames: batch sizes decoded together exactly}
TOGETHER_LIMIT = 8  # streams whose first chunks one call decodes at most


class _LayerStates:
    """Left context per convolution module, created as zeros (the original zero padding).

    Below the transformer the decoder's tensors are (B, C, 1, L): a 1-D signal as a one-row
    image, on a CPU in channels-last memory, so that oneDNN runs the convolutions in its NHWC
    kernels, which there are up to twice as fast as its 1-D ones where channels are few and
    the signal long (the last blocks, at 24 kHz); elsewhere in the usual memory format
    (``memory_format``)."""

    def __init__(self) -> None:
        self._tails: dict[int, torch.Tensor] = {}

    def conv(self, module, x: torch.Tensor) -> torch.Tensor:
        """A stride-1 causal convolution (``Qwen3TTSTokenizerV2CausalConvNet``) of (B, C, 1, L)."""
        conv = module.conv
        need = module.kernel_size - 1  # the module's own left padding
        if need:
            x = self._joined(module, x, need)
        weight = _kept(conv, IMAGE, lambda: _image(conv.weight.detach()))  # (out, in, 1, k)
        return F.conv2d(x, weight, conv.bias, dilation=(1, conv.dilation[0]), groups=conv.groups)

    def transposed(self, module, x: torch.Tensor) -> torch.Tensor:
        """A causal transposed convolution of (B, C, 1, L) whose kernel is its stride (no
        overlap) or twice it (an input's outputs overlap the next input's), as all of the
        codec's are."""
        conv = module.conv
        stride, kernel = conv.stride[0], conv.kernel_size[0]
        if kernel not in (stride, 2 * stride) or conv.padding[0] or conv.groups != 1:
            raise ValueError(f"unsupported transposed convolution in the codec: {conv}")
        return _overlap_add(conv, x if kernel == stride else self._joined(module, x, 1))

    def _joined(self, module, x: torch.Tensor, keep: int) -> torch.Tensor:
        """``x`` after the module's left context (zeros at first); keeps its last ``keep`` inputs."""
        tail = self._tails.get(id(module))
        if tail is None:
            tail = x.new_zeros(x.shape[0], x.shape[1], 1, keep).contiguous(memory_format=memory_format(x))
        # In the device's memory format whatever cat chose (a one-position tail fits either, and
        # then the rows of a transposed convolution's product would lie differently alone and in a batch).
        joined = torch.cat([tail, x], dim=-1).contiguous(memory_format=memory_format(x))
        self._tails[id(module)] = joined[..., -keep:].clone()  # a view would hold all of x between chunks
        return joined


def _kept(conv, name: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A weight in the layout this decoder needs: made once per model, kept on the module."""
    weight = getattr(conv, name, None)
    if weight is None:
        weight = make()
        setattr(conv, name, weight)
    return weight


def forget_kept_weights(decoder: torch.nn.Module) -> None:
    """Drop the weight layouts kept on ``decoder``'s modules (made again at next use), and
    what ``probe_first_chunks`` found: after its dtype or the memory format changes."""
    for module in decoder.modules():
        for name in (IMAGE, MATRIX, TOGETHER):
            if hasattr(module, name):
                delattr(module, name)


def _overlap_add(conv, joined: torch.Tensor) -> torch.Tensor:
    """A transposed convolution as one matrix product and, where the kernel is twice the
    stride, an overlap-add: each input frame makes two strides of output, the second of which
    lands on the next frame's first (the first frame of ``joined`` is the previous chunk's
    last, whose own output went out then). PyTorch runs ConvTranspose1d without oneDNN on a
    CPU; the product runs in BLAS. Same output, up to the order of float sums."""
    # (in, out, k) -> (in, k * out)
    weight = _kept(conv, MATRIX, lambda: conv.weight.detach().permute(0, 2, 1).reshape(conv.weight.shape[0], -1))
    stride, batch, frames = conv.stride[0], joined.shape[0], joined.shape[-1]
    overlap = conv.kernel_size[0] // stride
    rows = joined.permute(0, 2, 3, 1).reshape(batch, frames, -1)  # (B, L, in): channels-last memory, no copy
    # Each stream's rows in a product of their own, as when it is decoded alone: a product of
    # all streams' rows may round differently, and a batched matmul copies the weight per stream.
    products = [torch.matmul(rows[b : b + 1], weight) for b in range(batch)]
    spans = (products[0] if batch == 1 else torch.cat(products)).view(batch, frames, overlap, stride, -1)
    out = spans[:, :, 0] if overlap == 1 else spans[:, 1:, 0] + spans[:, :-1, 1]  # (B, L', s, out)
    if conv.bias is not None:
        out = out + conv.bias
    out = out.reshape(batch, -1, 1, out.shape[-1]).permute(0, 3, 2, 1)  # (B, out, 1, L * s), channels-last
    return out.contiguous(memory_format=memory_format(out))


def snake_beta(module, x: torch.Tensor) -> torch.Tensor:
    """The codec's SnakeBeta activation, x + sin²(αx) / β, as the package computes it but in
    place on one buffer: at 24 kHz its tensors are the decoder's largest, and the package's
    form makes five of them per call."""
    alpha = module.alpha.exp()[None, :, None, None]
    inverse_beta = 1.0 / (module.beta.exp() + module.no_div_by_zero)[None, :, None, None]
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
        self.together: FirstChunks | None = None  # decodes its first chunk with other streams'
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
        together, self.together = self.together, None
        samples = together.samples_for(self, frames) if together is not None else None
        if samples is None:
            samples = self._run(frames)
        return samples.float().cpu().numpy()

    @property
    def fresh(self) -> bool:
        """Whether it has decoded nothing yet and starts from silence."""
        return self._position == 0 and not self._states._tails

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
        hidden = _image(dec.quantizer.decode(codes))
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
        hidden = _image(hidden.transpose(1, 2))
        for transposed, convnext in dec.upsample:
            hidden = states.transposed(transposed, hidden)
            hidden = self._convnext(convnext, hidden)
        first, *blocks, act, last = dec.decoder
        wav = self._block(blocks[0], states.conv(first, hidden))
        # On a CPU the later blocks run a few frames at a time: at 24 kHz their tensors
        # outgrow the caches (12 MB for 16 frames of the last block), and every elementwise
        # pass over them then goes to memory. The first block's transposed convolution reads
        # 75 MB of weights, once a chunk, so it takes the whole chunk. A GPU takes it whole.
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
        states = self._states
        snake, transposed, *units = block.block
        wav = states.transposed(transposed, snake_beta(snake, wav))
        for unit in units:
            inner = states.conv(unit.conv1, snake_beta(unit.act1, wav))
            wav = states.conv(unit.conv2, snake_beta(unit.act2, inner)).add_(wav)
        return wav

    def _convnext(self, block, x: torch.Tensor) -> torch.Tensor:
        h = self._states.conv(block.dwconv, x)[:, :, 0].transpose(1, 2)  # (B, L, C)
        h = block.pwconv2(block.act(block.pwconv1(block.norm(h))))
        return x + _image((block.gamma * h).transpose(1, 2))


@dataclass(frozen=True)
class _Share:
    """One stream's part of a decode of several: its samples and the state it goes on from."""

    codes: torch.Tensor  # (n, 16)
    samples: torch.Tensor  # (n * 1920,)
    tails: dict[int, torch.Tensor]
    cache: DynamicCache
    position: int


class FirstChunks:
    """The first chunks of streams that start from silence at the same step, decoded in one
    call of the codec, each stream then going on alone from its own share of the state.

    Streams prefilled together make their first frames at the same step, and on a CPU one
    call for several of them costs far less than one call each (weights read once, less
    overhead per operator); each stream's audio is then heard sooner. The decode runs when
    the first member needs its chunk (on the audio thread); the others take their share. It
    is used only at batch sizes where ``probe_first_chunks`` found every stream's samples and
    state equal to a lone decode's, so a stream sounds the same alone or in a group. A member
    whose chunk turns out different from the codes it was given, or a group whose decode
    fails, decodes alone."""

    def __init__(self, tts, members: list[tuple[StreamingDecoder, torch.Tensor]]):
        """``members``: each stream's decoder (fresh) and the (n, 16) codes of its first chunk."""
        self._tts = tts
        self._members = members
        self._shares: dict[int, _Share] | None = None

    def samples_for(self, decoder: StreamingDecoder, frames: torch.Tensor) -> torch.Tensor | None:
        """``decoder``'s samples for its first chunk ``frames``, its state set to go on from
        them; None where it must decode them itself."""
        if self._shares is None:
            try:
                self._shares = self._decode()
            except Exception:  # noqa: BLE001 - each member then decodes alone and reports its own failure
                log.exception("decoding %d first chunks together failed; each decodes alone", len(self._members))
                self._shares = {}
        share = self._shares.pop(id(decoder), None)
        if share is None or not decoder.fresh or not torch.equal(share.codes, frames):
            return None
        decoder._states._tails = share.tails
        decoder._cache = share.cache
        decoder._position = share.position
        return share.samples

    def _decode(self) -> dict[int, _Share]:
        codes = torch.stack([chunk for _, chunk in self._members])  # (B, n, 16)
        together = StreamingDecoder(self._tts)
        samples = together._decode(codes.transpose(1, 2))
        shares = {}
        for b, (decoder, chunk) in enumerate(self._members):
            cache = copy.deepcopy(together._cache)
            cache.batch_select_indices(torch.tensor([b], device=codes.device))
            tails = {key: tail[b : b + 1].clone() for key, tail in together._states._tails.items()}
            shares[id(decoder)] = _Share(chunk, samples[b], tails, cache, together._position)
        return shares


def together_sizes(tts, frames: int) -> frozenset[int]:
    """Batch sizes at which first chunks of ``frames`` frames are decoded together (empty
    until ``probe_first_chunks`` ran)."""
    return getattr(tts.model.speech_tokenizer.model.decoder, TOGETHER, {}).get(frames, frozenset())


def decode_together(tts, openings: list[tuple[StreamingDecoder, torch.Tensor]]) -> None:
    """Streams whose first chunks (``openings``: fresh decoder, (n, 16) codes) complete at
    the same step: group them, as many as the probe allowed per group, to decode together."""
    by_length: dict[int, list[tuple[StreamingDecoder, torch.Tensor]]] = {}
    for decoder, chunk in openings:
        by_length.setdefault(chunk.shape[0], []).append((decoder, chunk))
    for frames, members in by_length.items():
        sizes = together_sizes(tts, frames)
        while len(members) > 1:
            size = max((s for s in sizes if s <= len(members)), default=0)
            if not size:
                break
            group = FirstChunks(tts, members[:size])
            for decoder, _ in members[:size]:
                decoder.together = group
            members = members[size:]


@torch.inference_mode()
def probe_first_chunks(tts, frames: int, limit: int = TOGETHER_LIMIT) -> frozenset[int]:
    """Find the batch sizes (2 to ``limit``) at which first chunks of ``frames`` frames decoded
    in one call give every stream exactly the samples and state of a lone decode, with the
    codec's kernels on this machine (which a batch's size can change), and keep them on the
    codec for ``decode_together``. Seeded codes stand in for a model's: which kernels run,
    and so whether their sums round alike, depends on the shapes, not the values. It stops
    at the first size that differs (where two streams already do, as a float32 codec's on a
    CPU, larger batches are not worth the start-up time)."""
    codec = tts.model.speech_tokenizer.model.decoder
    device = next(codec.parameters()).device
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, codec.config.codebook_size, (limit, frames, 16), generator=generator).to(device)
    lone: list[tuple[torch.Tensor, StreamingDecoder]] = []
    sizes = set()
    for size in range(2, limit + 1):
        while len(lone) < size:  # each stream's lone decode, made when a batch first includes it
            decoder = StreamingDecoder(tts)
            lone.append((decoder._run(codes[len(lone)]), decoder))
        members = [(StreamingDecoder(tts), codes[b]) for b in range(size)]
        shares = FirstChunks(tts, members)._decode()
        if not all(_same(shares[id(decoder)], *lone[b]) for b, (decoder, _) in enumerate(members)):
            break
        sizes.add(size)
    found = frozenset(sizes)
    setattr(codec, TOGETHER, {**getattr(codec, TOGETHER, {}), frames: found})
    return found


def _same(share: _Share, samples: torch.Tensor, decoder: StreamingDecoder) -> bool:
    if not torch.equal(share.samples, samples) or share.tails.keys() != decoder._states._tails.keys():
        return False
    if not all(torch.equal(tail, decoder._states._tails[key]) for key, tail in share.tails.items()):
        return False
    ours, theirs = share.cache.layers, decoder._cache.layers
    return len(ours) == len(theirs) and all(
        _equal(a.keys, b.keys) and _equal(a.values, b.values) for a, b in zip(ours, theirs)
    )


def _equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is b if a is None or b is None else torch.equal(a, b)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """How the decoder holds its one-row images on ``x``'s device: channels-last on a CPU
    (oneDNN's NHWC convolutions), the usual layout elsewhere (cuDNN's, as for the package)."""
    return torch.channels_last if x.device.type == "cpu" else torch.contiguous_format


def _image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, L) -> (B, C, 1, L) in the device's memory format (on a CPU no copy when ``x`` is
    a transposed (B, L, C))."""
    return x.unsqueeze(2).contiguous(memory_format=memory_format(x))
