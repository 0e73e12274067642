"""QWEN_TTS_MAX_BATCH=auto (``capacity.py``): 8 rows on a CPU; on a GPU what the free memory
after loading holds, at one row's talker cache for the longest request (plus its code
predictor's and codec's), at most 64; a number is taken as it is."""

from __future__ import annotations

import pytest
import torch
from helpers import cpu_settings
from pydantic import ValidationError

from qwen_tts_api.constants import ModelKind
from qwen_tts_api.engine.models.loading import load_model
from qwen_tts_api.engine.runtime import capacity
from qwen_tts_api.settings import Settings


@pytest.fixture(scope="module")
def models(demo_models):
    model = load_model("customvoice", demo_models["customvoice"], cpu_settings(), dtype="float32")
    return {ModelKind.CUSTOMVOICE: model}


def test_a_cpu_keeps_eight_rows_and_a_number_is_taken_as_it_is(models):
    assert capacity.batch_size("auto", models) == capacity.CPU_BATCH == 8
    assert capacity.batch_size(24, models) == 24
    assert Settings().max_batch == "auto" and Settings(max_batch=12).max_batch == 12
    with pytest.raises(ValidationError, match="max_batch|QWEN_TTS_MAX_BATCH"):
        Settings(max_batch="many")


def test_a_row_is_its_caches_at_the_longest_request(models):
    model = models[ModelKind.CUSTOMVOICE]
    talker = model.tts.model.talker.config
    head_dim = getattr(talker, "head_dim", None) or talker.hidden_size // talker.num_attention_heads
    per_position = 2 * talker.num_hidden_layers * talker.num_key_value_heads * head_dim * 4  # float32
    talker_cache = per_position * (capacity.PROMPT_POSITIONS + model.max_new_tokens)
    assert talker_cache < capacity.row_bytes(model) < talker_cache * 1.2  # the others are small


@pytest.mark.parametrize("free_rows, expected", [(10, 8), (1000, 64), (0.5, 1)])
def test_a_gpu_holds_what_its_free_memory_allows(models, monkeypatch, free_rows, expected):
    model = models[ModelKind.CUSTOMVOICE]
    talker = model.tts.model.talker
    monkeypatch.setattr(type(talker), "device", property(lambda self: torch.device("cuda", 0)))
    free = int(free_rows * capacity.row_bytes(model))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    assert capacity.batch_size("auto", models) == expected
