"""The start-up probes' answers kept in the data directory: a second start on the same machine
and model reads them instead of decoding again, and anything that could change an answer is
a new key."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import cpu_settings

from qwen_tts_api.engine.generation.first_chunks import TOGETHER
from qwen_tts_api.engine.generation.streaming_decoder import TOGETHER_EXACT
from qwen_tts_api.engine.models.loading import load_model
from qwen_tts_api.engine.runtime import warmup
from qwen_tts_api.engine.runtime.engine import Engine
from qwen_tts_api.engine.runtime.jobs import EngineConfig
from qwen_tts_api.engine.runtime.probe_cache import FILE_NAME, ProbeCache


@pytest.fixture(scope="module")
def customvoice(demo_models):
    return load_model("customvoice", demo_models["customvoice"], cpu_settings(device="cpu"), dtype="float32")


def test_answers_are_kept_per_probe_model_and_question(customvoice, demo_models, tmp_path):
    kept = ProbeCache(tmp_path)
    key = kept.key("first-chunks", customvoice, 1, 4)
    assert key == ProbeCache(tmp_path).key("first-chunks", customvoice, 1, 4)
    others = {kept.key("first-chunks", customvoice, 3, 4), kept.key("decoding-together", customvoice)}
    base = load_model("base", demo_models["base"], cpu_settings(device="cpu"), dtype="float32")
    others.add(kept.key("first-chunks", base, 1, 4))
    assert key not in others and len(others) == 3
    assert kept.get(key) is None
    kept.put(key, [2, 3])
    assert ProbeCache(tmp_path).get(key) == [2, 3]  # read back by the next start
    (tmp_path / FILE_NAME).write_text("{not json")
    assert ProbeCache(tmp_path).get(key) is None  # a damaged file: probe again
    assert ProbeCache(None).get(key) is None  # nowhere to keep them
    ProbeCache(None).put(key, True)


def test_a_second_start_reads_the_probes_answers(customvoice, tmp_path, monkeypatch):
    probed: list[str] = []
    real_first, real_together = warmup.probe_first_chunks, warmup.probe_decoding_together
    monkeypatch.setattr(warmup, "probe_first_chunks", lambda *a: probed.append("first") or real_first(*a))
    monkeypatch.setattr(warmup, "probe_decoding_together", lambda *a: probed.append("together") or real_together(*a))
    codec = customvoice.tts.model.speech_tokenizer.model.decoder

    async def probe_both() -> None:
        kept = ProbeCache(tmp_path)
        await warmup._probe_first_chunks(engine, customvoice, kept)
        await warmup._probe_decoding_together(engine, customvoice, kept)

    engine = Engine({"customvoice": customvoice}, EngineConfig(max_batch=4, decode_together="auto"))
    try:
        asyncio.run(probe_both())
        assert probed == ["first", "together"]
        found, exact = getattr(codec, TOGETHER)[1], getattr(codec, TOGETHER_EXACT)
        saved = json.loads((tmp_path / FILE_NAME).read_text())
        assert sorted(saved.values(), key=str) == sorted([sorted(found), exact], key=str)
        delattr(codec, TOGETHER)  # as a new process has it
        delattr(codec, TOGETHER_EXACT)
        asyncio.run(probe_both())
        assert probed == ["first", "together"], "the second start decoded nothing to probe"
        # The answers are where the decoder looks for them.
        assert getattr(codec, TOGETHER)[1] == found and getattr(codec, TOGETHER_EXACT) is exact
    finally:
        engine.close()
