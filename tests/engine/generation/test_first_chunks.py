"""Streams that start together decode their first chunks in one call of the codec
(``first_chunks.ChunkGroup``), only at batch sizes where a probe found that call's samples
and state equal to lone decodes to the bit: each stream then sounds exactly as it does alone,
in its first chunk and in every chunk after it. Where the probe finds a difference, or a
group's decode fails, the stream decodes alone. And on a server, requests arriving in a
burst get their lone bytes."""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest
import torch
from helpers import LiveServer, burst_in_one_step, cpu_settings

from qwen_tts_api.engine.generation import codec_layers
from qwen_tts_api.engine.generation.first_chunks import (
    TOGETHER,
    ChunkGroup,
    FirstChunk,
    group_first_chunks,
    probe_first_chunks,
    together_sizes,
)
from qwen_tts_api.engine.generation.streaming_decoder import DecodedChunk, StreamingDecoder, decodes_together

FRAMES = 7  # chunks of 1, 2 and 4 frames


def random_codes(tts, streams: int, seed: int = 1) -> torch.Tensor:
    """(streams, FRAMES, 16) codes, as a talker would make them."""
    codec = tts.model.speech_tokenizer.model.decoder
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, codec.config.codebook_size, (streams, FRAMES, 16), generator=generator)
    return codes.to(next(codec.parameters()).device)


def counted_group_decodes(monkeypatch) -> list[int]:
    """The size of each group decoded from now on (the list grows as they are)."""
    groups: list[int] = []
    original = ChunkGroup.decode
    monkeypatch.setattr(ChunkGroup, "decode", lambda self: groups.append(len(self.chunks)) or original(self))
    return groups


def first_chunks(tts, codes: torch.Tensor, together: bool) -> list[FirstChunk]:
    """Each stream's one-frame first chunk, complete; ``together``: grouped as the runner
    groups those completed at one step."""
    firsts = [FirstChunk(1, urgent=True, groupable=True) for _ in codes]
    if together:
        group_first_chunks(tts, [(first, first.completed_by(chunk[0])) for first, chunk in zip(firsts, codes)])
    for first, chunk in zip(firsts, codes):
        assert first.add(chunk[0])
    return firsts


def streamed(tts, codes: torch.Tensor, together: bool):
    """Each stream's chunks (first chunk one frame, then 2 and 4), streams in turn as the
    audio thread runs them; ``together``: their first chunks grouped."""
    decoders = [StreamingDecoder(tts, first_chunk=1, max_chunk=4) for _ in codes]
    chunks: list[list[np.ndarray]] = [
        [first.decode(decoder)] for first, decoder in zip(first_chunks(tts, codes, together), decoders)
    ]
    for frame in range(1, codes.shape[1]):
        for stream, decoder in enumerate(decoders):
            if (audio := decoder.push(codes[stream, frame])) is not None:
                chunks[stream].append(audio)
    for stream, decoder in enumerate(decoders):
        if (tail := decoder.flush()) is not None:
            chunks[stream].append(tail)
    return chunks, decoders


def test_first_chunks_together_equal_lone_ones_where_the_probe_allows(tts):
    sizes = probe_first_chunks(tts, frames=1, limit=4)
    assert together_sizes(tts, 1) == sizes and sizes <= {2, 3, 4}
    codes = random_codes(tts, 4)
    lone, _ = streamed(tts, codes, together=False)
    grouped, _ = streamed(tts, codes, together=True)
    for stream in range(4):
        assert [c.shape for c in grouped[stream]] == [(1920,), (3840,), (7680,)]
        assert all(np.array_equal(a, b) for a, b in zip(grouped[stream], lone[stream]))
    # Groups only of the sizes found exact (none where none was).
    members: dict[int, int] = {}
    for first in first_chunks(tts, codes, together=True):
        if first.group is not None:
            members[id(first.group[0])] = members.get(id(first.group[0]), 0) + 1
    assert set(members.values()) <= sizes and bool(members) == bool(sizes)


def test_each_stream_goes_on_from_its_own_share_of_a_groups_state(tts, monkeypatch):
    """Forced to group where the probe may not (float32 rounds a batch's sums differently
    here): each stream's first chunk and every chunk after it stay within float rounding of
    its lone decode, so each carries on from its own part of the state."""
    monkeypatch.setattr(tts.model.speech_tokenizer.model.decoder, TOGETHER, {1: frozenset({3})}, raising=False)
    codes = random_codes(tts, 3, seed=2)
    lone, _ = streamed(tts, codes, together=False)
    calls = counted_group_decodes(monkeypatch)
    grouped, decoders = streamed(tts, codes, together=True)
    assert calls == [3]
    tolerance = 1e-4 if tts.model.speech_tokenizer.model.dtype == torch.float32 else 0.05  # bfloat16: 8-bit mantissa
    for stream in range(3):
        assert len(grouped[stream]) == len(lone[stream]) == 3
        assert all(np.abs(a - b).max() <= tolerance for a, b in zip(grouped[stream], lone[stream]))
        assert decoders[stream].state().positions == (FRAMES,)


def test_the_probe_leaves_out_sizes_whose_streams_differ(tts, monkeypatch):
    """A group decode that matches lone decodes up to two streams, and differs in the last
    stream from three on: the probe keeps two only."""

    def lone_then_nudged(self):
        shares = []
        for index, chunk in enumerate(self.chunks):
            alone = StreamingDecoder(self.tts)
            samples = alone.run(chunk)
            if len(self.chunks) >= 3 and index == len(self.chunks) - 1:
                samples = samples + 1e-3
            shares.append(DecodedChunk(samples, alone.state()))
        return shares

    monkeypatch.setattr(ChunkGroup, "decode", lone_then_nudged)
    assert probe_first_chunks(tts, frames=1, limit=4) == {2}
    codec_layers.forget_kept_weights(tts.model.speech_tokenizer.model.decoder)  # the probe's finding too
    assert together_sizes(tts, 1) == frozenset()


def test_a_stream_decodes_alone_when_the_group_fails(tts, monkeypatch, caplog):
    monkeypatch.setattr(tts.model.speech_tokenizer.model.decoder, TOGETHER, {1: frozenset({2})}, raising=False)
    codes = random_codes(tts, 2, seed=3)
    lone, _ = streamed(tts, codes, together=False)

    def failing(self):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(ChunkGroup, "decode", failing)
    with caplog.at_level(logging.ERROR):
        failed, _ = streamed(tts, codes, together=True)
    assert all(np.array_equal(a, b) for stream in range(2) for a, b in zip(failed[stream], lone[stream]))
    assert "each decodes alone" in caplog.text


BODY = {"model": "qwen3-tts", "voice": "vivian", "language": "English", "response_format": "pcm", "stream": True}


@pytest.mark.slow  # starts a server
def test_a_burst_gets_its_lone_bytes_with_first_chunks_decoded_together(demo_models, monkeypatch):
    """Four greedy requests arriving during a prefill start at one step (test_admission.py);
    with a bfloat16 codec, their first chunks are decoded in one call wherever the server's
    probe (at warm-up) allowed a group of four, and each client gets the bytes it gets alone."""
    settings = cpu_settings(
        customvoice_model_path=demo_models["customvoice"], decode_thread="on", codec_dtype="bfloat16"
    )
    with LiveServer(settings) as server:
        tts = server.app.state.server.engine.models["customvoice"].tts
        texts = [f"Burst member {n} speaks now." for n in range(4)]

        def ask(text: str) -> bytes:
            with httpx.Client(base_url=server.url, timeout=300) as http:
                r = http.post("/v1/audio/speech", json={**BODY, "input": text, "temperature": 0, "max_new_tokens": 8})
                assert r.status_code == 200, r.text
                return r.content

        alone = [ask(text) for text in texts]
        calls: list[int] = []  # streams in each codec call
        decode_batch = StreamingDecoder.decode_batch
        monkeypatch.setattr(
            StreamingDecoder, "decode_batch", lambda self, c: calls.append(c.shape[0]) or decode_batch(self, c)
        )
        burst = burst_in_one_step(monkeypatch, ask, texts)
        assert burst == alone
        # Grouped as first chunks where the probe allowed four, or with every later chunk too
        # where the probe found decoding together exact (QWEN_TTS_DECODE_TOGETHER=auto).
        grouped = 4 in together_sizes(tts, 1) or decodes_together(tts, "auto")
        assert (4 in calls) is grouped, calls


@pytest.mark.slow  # starts a server
def test_a_failing_probe_leaves_the_server_ready_decoding_alone(demo_models, monkeypatch, caplog):
    def failing(*args, **kwargs):
        raise RuntimeError("no batched convolution here")

    monkeypatch.setattr("qwen_tts_api.engine.runtime.warmup.probe_first_chunks", failing)
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"])
    with caplog.at_level(logging.ERROR), LiveServer(settings) as server:
        assert server.app.state.server.readiness.ready
        with httpx.Client(base_url=server.url, timeout=120) as http:
            assert http.get("/ready").status_code == 200
            r = http.post("/v1/audio/speech", json={**BODY, "input": "Still speaking.", "max_new_tokens": 4})
        assert r.status_code == 200 and len(r.content) > 0
        assert together_sizes(server.app.state.server.engine.models["customvoice"].tts, 1) == frozenset()
    assert "each stream decodes alone" in caplog.text
