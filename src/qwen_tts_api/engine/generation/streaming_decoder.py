"""Incremental waveform decoding through the causal 12 Hz codec decoder, exactly.

Every layer keeps the state it needs between chunks (``codec_layers.LayerStates`` for the
convolutions, ``WindowCache`` for the sliding-window transformer), so chunk by chunk the
output is the one-pass decode and each frame is decoded once. The first chunk is small so
audio starts early; later chunks double in size up to ``max_chunk`` to keep the per-call
overhead low. A decoder's state can be read and restored (``state``, ``restore``): a
reference decoded once is shared by every segment that continues from it, and states of
streams at different positions stack into one batch (``DecoderState.stack``) whose rows
go on from their own row afterwards (``decode_together``, ``first_chunks.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .codec_layers import KEPT, LayerStates, image, snake_beta

TOGETHER_EXACT = KEPT + "decodes_together_exactly"  # on the codec: what probe_decoding_together found
TILE_FRAMES = 16  # frames of one stream the later upsampling blocks take at a time on a CPU (decode_batch)


class WindowCache:
    """The codec transformer's keys and values for a batch of streams, each at its own
    position: per layer (B, heads, L, head_dim), row b's last ``min(positions[b], keep)``
    entries real and the rest zeros on the left. The transformer attends over a sliding
    window of ``keep + 1`` positions, so no more is kept. It stands in for the package's
    ``DynamicCache`` (the attention calls ``update``); the mask that hides each row's
    padding and the positions beyond its window is ``mask``."""

    def __init__(self, keep: int, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.keep = keep
        self.layers = layers or []

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int, cache_kwargs=None):
        """The layer's past and new keys and values (for its attention); the last ``keep`` stay."""
        if layer < len(self.layers):
            past_keys, past_values = self.layers[layer]
            keys, values = torch.cat([past_keys, keys], dim=2), torch.cat([past_values, values], dim=2)
        kept = (keys[:, :, -self.keep :].clone(), values[:, :, -self.keep :].clone())
        if layer < len(self.layers):
            self.layers[layer] = kept
        else:
            self.layers.append(kept)
        return keys, values

    def mask(self, positions: Sequence[int], new: int, like: torch.Tensor) -> torch.Tensor:
        """(B, 1, new, length + new) additive mask for ``new`` positions after ``positions``:
        a row attends to its own real past and new positions up to itself, within the window."""
        past = self.length
        query = past + torch.arange(new, device=like.device)[:, None]
        key = torch.arange(past + new, device=like.device)[None, :]
        real = torch.tensor([min(p, self.keep) for p in positions], device=like.device)
        allowed = (key <= query) & (query - key <= self.keep)  # causal, sliding window
        allowed = allowed[None] & (key >= past - real[:, None, None])[:, :, :]  # each row's padding hidden
        blocked = torch.zeros(allowed.shape, dtype=like.dtype, device=like.device)
        return blocked.masked_fill_(~allowed, torch.finfo(like.dtype).min)[:, None]

    def row(self, index: int, position: int) -> WindowCache:
        """One row, without its padding (a copy)."""
        real = min(position, self.keep)
        return WindowCache(
            self.keep,
            [
                (
                    k[index : index + 1, :, k.shape[2] - real :].clone(),
                    v[index : index + 1, :, v.shape[2] - real :].clone(),
                )
                for k, v in self.layers
            ],
        )

    @staticmethod
    def stack(caches: Sequence[WindowCache]) -> WindowCache:
        """Rows of several caches in one, each padded on the left to the longest."""
        shaped = next((cache for cache in caches if cache.layers), None)
        if shaped is None:
            return WindowCache(caches[0].keep)
        longest = max(cache.length for cache in caches)
        layers = []
        for layer, (keys, _) in enumerate(shaped.layers):
            blank = keys.new_zeros(1, keys.shape[1], longest, keys.shape[3])
            rows_k, rows_v = [], []
            for cache in caches:
                if not cache.layers:
                    rows_k.append(blank)
                    rows_v.append(blank)
                    continue
                k, v = cache.layers[layer]
                pad = longest - k.shape[2]
                rows_k.append(torch.cat([blank[:, :, :pad], k], dim=2) if pad else k)
                rows_v.append(torch.cat([blank[:, :, :pad], v], dim=2) if pad else v)
            layers.append((torch.cat(rows_k), torch.cat(rows_v)))
        return WindowCache(shaped.keep, layers)


@dataclass(frozen=True)
class DecoderState:
    """Where a decoder stands, for each of its rows (streams): each convolution's left
    context (by module), the codec transformer's window of keys and values, and the frames
    each row has decoded. Tails and caches are replaced, never written in place, so states
    may share them."""

    tails: dict[int, torch.Tensor]
    cache: WindowCache
    positions: tuple[int, ...]

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
        tails = {key: tail[index : index + 1].clone() for key, tail in self.tails.items()}
        position = self.positions[index]
        return DecoderState(tails, self.cache.row(index, position), (position,))

    @staticmethod
    @torch.inference_mode()
    def stack(states: Sequence[DecoderState]) -> DecoderState:
        """One-row states of several streams, wherever each stands, as one batch's (a fresh
        state, never decoded, stands for silence)."""
        tails = {}
        for key in {key for state in states for key in state.tails}:
            shaped = next(state.tails[key] for state in states if key in state.tails)
            tails[key] = torch.cat([state.tails.get(key, torch.zeros_like(shaped)) for state in states])
        positions = tuple(p for state in states for p in (state.positions or (0,)))
        return DecoderState(tails, WindowCache.stack([state.cache for state in states]), positions)


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
        self._cache = WindowCache(self.decoder.config.sliding_window - 1)
        self._positions: tuple[int, ...] = ()  # per row; none until it decodes (any batch size)
        if context is not None:
            self.restore(context)

    def state(self) -> DecoderState:
        """Its state now (shared: the next decode replaces what it changes)."""
        return DecoderState(
            dict(self._layers.tails), WindowCache(self._cache.keep, list(self._cache.layers)), self._positions
        )

    def restore(self, state: DecoderState) -> None:
        """Go on from ``state`` (which stays as it is)."""
        self._layers.tails = dict(state.tails)
        self._cache = WindowCache(state.cache.keep, list(state.cache.layers))
        self._positions = state.positions

    @property
    def fresh(self) -> bool:
        """Whether it has decoded nothing yet and starts from silence."""
        return not self._positions

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
        """(B, 16, n) codes -> (B, n * 1920) samples. The state follows the batch: its B
        rows are streams wherever each stands (``decode_together``, ``first_chunks.py``)."""
        dec, states = self.decoder, self._layers
        codes = codes.clamp(min=0)
        batch, n = codes.shape[0], codes.shape[-1]
        starts = self._positions or (0,) * batch
        hidden = image(dec.quantizer.decode(codes))
        hidden = states.conv(dec.pre_conv, hidden)[:, :, 0].transpose(1, 2)
        mask = self._cache.mask(starts, n, hidden)
        past = self._cache.length
        hidden = dec.pre_transformer(
            inputs_embeds=hidden,
            attention_mask={"sliding_attention": mask, "full_attention": mask},
            past_key_values=self._cache,
            use_cache=True,
            cache_position=torch.arange(past, past + n, device=hidden.device),
            position_ids=torch.tensor(starts, device=hidden.device)[:, None] + torch.arange(n, device=hidden.device),
        ).last_hidden_state
        self._positions = tuple(start + n for start in starts)
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


def decode_together(tts, decoders: Sequence[StreamingDecoder], chunks: Sequence[torch.Tensor]) -> np.ndarray:
    """Each decoder's next chunk (an (n, 16) tensor, one n for all), wherever each decoder
    stands, in one codec call; each decoder goes on from its row. Returns (B, n * 1920)
    float32 samples, brought to the host in one copy. A failure leaves every decoder as it was."""
    together = StreamingDecoder(tts, context=DecoderState.stack([d.state() for d in decoders]))
    samples = together.decode_batch(torch.stack(list(chunks)).transpose(1, 2)).float().cpu().numpy()
    state = together.state()
    for index, decoder in enumerate(decoders):
        decoder.restore(state.row(index))
    return samples


def decodes_together(tts, setting: str) -> bool:
    """``QWEN_TTS_DECODE_TOGETHER`` (auto | on | off) for this model: auto decodes streams'
    chunks together on a GPU (throughput; its kernels round by batch shape anyway) and on a
    CPU where ``probe_decoding_together`` found it exact, so that a stream's audio there is
    the same to the bit alone or under load."""
    if setting != "auto":
        return setting == "on"
    codec = tts.model.speech_tokenizer.model.decoder
    return next(codec.parameters()).device.type != "cpu" or getattr(codec, TOGETHER_EXACT, False)


@torch.inference_mode()
def probe_decoding_together(tts) -> bool:
    """Whether streams at different positions decoded together get exactly the samples and
    state of their lone decodes, with this machine's kernels and the codec's dtype (kept on
    the codec for ``decodes_together``). Seeded codes stand in for a model's: which kernels
    run, and so how their sums round, depends on the shapes, not the values."""
    codec = tts.model.speech_tokenizer.model.decoder
    device = next(codec.parameters()).device
    generator = torch.Generator().manual_seed(0)
    histories, chunk = (0, 2, 5, 9), 4
    codes = torch.randint(0, codec.config.codebook_size, (len(histories), 9 + chunk, 16), generator=generator)
    codes = codes.to(device)
    lone, together = [], []
    for stream, history in enumerate(histories):
        alone, other = StreamingDecoder(tts), StreamingDecoder(tts)
        if history:
            alone.run(codes[stream, :history])
            other.run(codes[stream, :history])
        lone.append((alone.run(codes[stream, history : history + chunk]), alone.state()))
        together.append(other)
    samples = decode_together(tts, together, [codes[s, h : h + chunk] for s, h in enumerate(histories)])
    exact = all(
        np.array_equal(ours, theirs.float().cpu().numpy()) and same_state(decoder.state(), state)
        for ours, (theirs, state), decoder in zip(samples, lone, together)
    )
    keep_decoding_together(tts, exact)
    return exact


def keep_decoding_together(tts, exact: bool) -> None:
    """Keep on the codec whether streams decode together exactly (what
    ``probe_decoding_together`` found, now or at an earlier start)."""
    setattr(tts.model.speech_tokenizer.model.decoder, TOGETHER_EXACT, exact)


def same_state(ours: DecoderState, theirs: DecoderState) -> bool:
    """Two states equal to the bit (positions, tails, the transformer's window)."""
    if ours.positions != theirs.positions or ours.tails.keys() != theirs.tails.keys():
        return False
    if not all(torch.equal(tail, theirs.tails[key]) for key, tail in ours.tails.items()):
        return False
    mine, other = ours.cache.layers, theirs.cache.layers
    return len(mine) == len(other) and all(torch.equal(a, b) for x, y in zip(mine, other) for a, b in zip(x, y))
