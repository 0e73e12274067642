"""A stream's first audio chunk, and the first chunks of streams that start together decoded
in one codec call.

Streams prefilled together make their first frames at the same step, and on a CPU one codec
call for several of their first chunks costs far less than one call each (weights read once,
less overhead per operator), so each is heard sooner. A group is decoded only at batch sizes
where ``probe_first_chunks`` found every stream's samples and state equal to a lone decode's
to the bit, with this machine's kernels, so a stream sounds the same alone or in a group;
each then goes on alone from its own row of the state. A group whose decode fails leaves
each member to decode alone.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .codec_layers import KEPT
from .streaming_decoder import DecodedChunk, DecoderState, StreamingDecoder, same_state

log = logging.getLogger(__name__)
TOGETHER = KEPT + "first_chunks_together"  # on the codec: {chunk frames: batch sizes decoded together exactly}
TOGETHER_LIMIT = 8  # streams whose first chunks one call decodes at most


class ChunkGroup:
    """First chunks of streams starting from silence, decoded in one call when the first
    member needs its share (on the audio thread); the others then take theirs."""

    def __init__(self, tts, chunks: list[torch.Tensor]):
        """``chunks``: each member's (n, 16) codes, all of one length."""
        self.tts = tts
        self.chunks = chunks
        self._shares: list[DecodedChunk] | None = None

    def share(self, member: int) -> DecodedChunk | None:
        """The member's decoded chunk; None where it must decode alone (the group failed)."""
        if self._shares is None:
            try:
                self._shares = self.decode()
            except Exception:  # noqa: BLE001 - each member then decodes alone and reports its own failure
                log.exception("decoding %d first chunks together failed; each decodes alone", len(self.chunks))
                self._shares = []
        return self._shares[member] if member < len(self._shares) else None

    def decode(self) -> list[DecodedChunk]:
        together = StreamingDecoder(self.tts)
        samples = together.decode_batch(torch.stack(self.chunks).transpose(1, 2))
        state = together.state()
        return [DecodedChunk(samples[b], state.row(b)) for b in range(len(self.chunks))]


class FirstChunk:
    """One stream's first chunk while its frames come: the one place that holds its codes,
    whether it is urgent (a client hears it: it goes ahead of other streams' audio work) and
    the group, if any, that decodes it with other streams' first chunks."""

    def __init__(self, frames: int, urgent: bool, groupable: bool):
        self.frames = frames
        self.urgent = urgent
        self.groupable = groupable  # it starts from silence, and some group size was found exact
        self.codes: list[torch.Tensor] = []
        self.group: tuple[ChunkGroup, int] | None = None  # (group, member index)

    def completed_by(self, codes: torch.Tensor) -> torch.Tensor | None:
        """The (n, 16) chunk if this frame's ``codes`` complete it and it may be grouped."""
        if not self.groupable or len(self.codes) + 1 != self.frames:
            return None
        return torch.stack([*self.codes, codes])

    def add(self, codes: torch.Tensor) -> bool:
        """Take one frame's codes; True when the chunk is complete."""
        self.codes.append(codes)
        return len(self.codes) >= self.frames

    def decode(self, decoder: StreamingDecoder) -> np.ndarray:
        """The whole chunk through ``decoder`` (its share of the group's decode, if grouped)."""
        share = self.group[0].share(self.group[1]) if self.group is not None else None
        return decoder.decode_chunk(torch.stack(self.codes), share)

    def hand_over(self, decoder: StreamingDecoder) -> None:
        """An unfinished chunk's frames go to ``decoder`` as pending (the segment ended, or a
        live part waits for text): what is made is flushed from there."""
        for codes in self.codes:
            decoder.pending.append(codes)
        self.codes = []


def together_sizes(tts, frames: int) -> frozenset[int]:
    """Batch sizes at which first chunks of ``frames`` frames are decoded together (empty
    until ``probe_first_chunks`` ran)."""
    return getattr(tts.model.speech_tokenizer.model.decoder, TOGETHER, {}).get(frames, frozenset())


def group_first_chunks(tts, completing: list[tuple[FirstChunk, torch.Tensor]]) -> None:
    """First chunks that this step's frames complete (each with its (n, 16) codes): grouped,
    as many per group as the probe allowed, to decode together."""
    by_length: dict[int, list[tuple[FirstChunk, torch.Tensor]]] = {}
    for first, chunk in completing:
        by_length.setdefault(chunk.shape[0], []).append((first, chunk))
    for frames, members in by_length.items():
        sizes = together_sizes(tts, frames)
        while len(members) > 1:
            size = max((s for s in sizes if s <= len(members)), default=0)
            if not size:
                break
            group = ChunkGroup(tts, [chunk for _, chunk in members[:size]])
            for index, (first, _) in enumerate(members[:size]):
                first.group = (group, index)
            members = members[size:]


@torch.inference_mode()
def probe_first_chunks(tts, frames: int, limit: int = TOGETHER_LIMIT) -> frozenset[int]:
    """Find the batch sizes (2 to ``limit``) at which first chunks of ``frames`` frames decoded
    in one call give every stream exactly the samples and state of a lone decode, with the
    codec's kernels on this machine (which a batch's size can change), and keep them on the
    codec for ``group_first_chunks``. Seeded codes stand in for a model's: which kernels run,
    and so whether their sums round alike, depends on the shapes, not the values. It stops
    at the first size that differs (where two streams already do, as a float32 codec's on a
    CPU, larger batches are not worth the start-up time)."""
    codec = tts.model.speech_tokenizer.model.decoder
    device = next(codec.parameters()).device
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, codec.config.codebook_size, (limit, frames, 16), generator=generator).to(device)
    lone: list[tuple[torch.Tensor, DecoderState]] = []
    sizes = set()
    for size in range(2, limit + 1):
        while len(lone) < size:  # each stream's lone decode, made when a batch first includes it
            decoder = StreamingDecoder(tts)
            lone.append((decoder.run(codes[len(lone)]), decoder.state()))
        shares = ChunkGroup(tts, list(codes[:size])).decode()
        if not all(_same(share, *lone[b]) for b, share in enumerate(shares)):
            break
        sizes.add(size)
    found = frozenset(sizes)
    keep_first_chunk_sizes(tts, frames, found)
    return found


def keep_first_chunk_sizes(tts, frames: int, sizes: frozenset[int]) -> None:
    """Keep on the codec which batch sizes of first chunks of ``frames`` frames decode in one
    call (what ``probe_first_chunks`` found, now or at an earlier start)."""
    codec = tts.model.speech_tokenizer.model.decoder
    setattr(codec, TOGETHER, {**getattr(codec, TOGETHER, {}), frames: sizes})


def _same(share: DecodedChunk, samples: torch.Tensor, state: DecoderState) -> bool:
    return torch.equal(share.samples, samples) and same_state(share.state, state)
