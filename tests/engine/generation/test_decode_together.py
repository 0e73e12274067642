"""Streams at different positions decode their next chunks in one codec call
(``streaming_decoder.decode_together``): their decoder states (convolution tails, the codec
transformer's window of keys and values, positions) stack into one batch, padded where a
stream is younger, and each stream goes on from its own row. Every stream's samples stay
within rounding of its lone decode, whatever it was decoded with, in this chunk and the
ones after it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwen_tts_api.engine.generation.streaming_decoder import StreamingDecoder, decode_together

STREAMS = 16
CHUNK = 4  # frames every stream decodes together


def tolerance(tts) -> float:
    codec = tts.model.speech_tokenizer.model.decoder
    return 1e-4 if next(codec.parameters()).dtype == torch.float32 else 0.05  # bfloat16: 8-bit mantissa


def codes_for(tts, streams: int, frames: int) -> torch.Tensor:
    codec = tts.model.speech_tokenizer.model.decoder
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(0, codec.config.codebook_size, (streams, frames, 16), generator=generator)
    return codes.to(next(codec.parameters()).device)


def history(stream: int) -> int:
    """Frames stream ``stream`` decoded before: 0 (fresh) to beyond the transformer's window
    (72), so rows are young, padded, and full, and the positions all differ."""
    return [0, 1, 3, 5, 9, 14, 20, 27, 35, 44, 54, 65, 71, 77, 90, 101][stream]


def test_sixteen_streams_at_different_positions_decode_in_one_call(tts, monkeypatch):
    codes = codes_for(tts, STREAMS, history(STREAMS - 1) + 3 * CHUNK)
    lone, lone_states, together = [], [], []
    for stream in range(STREAMS):  # each stream alone: its history, then three chunks
        decoder = StreamingDecoder(tts)
        if history(stream):
            decoder.run(codes[stream, : history(stream)])
        start = history(stream)
        lone.append([decoder.run(codes[stream, start + c * CHUNK : start + (c + 1) * CHUNK]) for c in range(3)])
        lone_states.append(decoder.state())
        decoders = StreamingDecoder(tts)
        if history(stream):
            decoders.run(codes[stream, : history(stream)])
        together.append(decoders)
    calls: list[int] = []
    original = StreamingDecoder.decode_batch
    monkeypatch.setattr(StreamingDecoder, "decode_batch", lambda self, c: calls.append(c.shape[0]) or original(self, c))
    chunks = [
        decode_together(
            tts,
            together,
            [codes[s, history(s) + c * CHUNK : history(s) + (c + 1) * CHUNK] for s in range(STREAMS)],
        )
        for c in range(3)
    ]
    assert calls == [STREAMS] * 3  # one codec call per chunk for all sixteen streams
    worst = max(np.abs(chunks[c][s] - lone[s][c].float().cpu().numpy()).max() for s in range(STREAMS) for c in range(3))
    assert worst <= tolerance(tts), worst
    for s in range(STREAMS):  # each goes on alone from where it stands, with its own window
        ours, theirs = together[s].state(), lone_states[s]
        assert ours.positions == theirs.positions == (history(s) + 3 * CHUNK,)
        assert len(chunks[0][s]) == CHUNK * 1920
        # The transformer's keys carry their positions (rotary): each row's are its lone ones.
        for (keys, values), (lone_keys, lone_values) in zip(ours.cache.layers, theirs.cache.layers, strict=True):
            assert keys.shape == lone_keys.shape and keys.shape[2] == min(history(s) + 3 * CHUNK, 71)
            assert (keys - lone_keys).abs().max() <= tolerance(tts) and (values - lone_values).abs().max() <= tolerance(
                tts
            )
        for key, tail in ours.tails.items():  # inner activations: within rounding of their size
            lone_tail = theirs.tails[key]
            assert (tail - lone_tail).abs().max() <= tolerance(tts) * max(1.0, lone_tail.abs().max().item())


def test_a_stream_sounds_the_same_whatever_it_is_decoded_with(tts):
    """Stream 0's chunk decoded beside one set of streams or another: within rounding."""
    codes = codes_for(tts, 6, 40)
    mates_a = [StreamingDecoder(tts) for _ in range(3)]
    mates_b = [StreamingDecoder(tts) for _ in range(5)]
    for i, decoder in enumerate(mates_a[1:] + mates_b[1:]):
        decoder.run(codes[1 + i % 5, : 5 + 7 * (i % 5)])
    for group in (mates_a, mates_b):
        group[0].run(codes[0, :20])
    ours = [
        decode_together(tts, group, [codes[0, 20:26]] + [codes[i, 30:36] for i in range(1, len(group))])[0]
        for group in (mates_a, mates_b)
    ]
    alone = StreamingDecoder(tts)
    alone.run(codes[0, :20])
    expected = alone.run(codes[0, 20:26])
    for samples in ours:
        assert np.abs(samples - expected.float().cpu().numpy()).max() <= tolerance(tts)


def test_a_failed_call_leaves_every_decoder_as_it_was(tts, monkeypatch):
    codes = codes_for(tts, 2, 10)
    decoders = [StreamingDecoder(tts) for _ in range(2)]
    decoders[1].run(codes[1, :4])
    before = [d.state() for d in decoders]

    def broken(self, c):
        raise RuntimeError("codec failed")

    monkeypatch.setattr(StreamingDecoder, "decode_batch", broken)
    with pytest.raises(RuntimeError):
        decode_together(tts, decoders, [codes[0, :3], codes[1, 4:7]])
    assert [d.state().positions for d in decoders] == [s.positions for s in before] == [(), (4,)]
