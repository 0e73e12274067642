"""The demo CustomVoice model with its codec in each dtype the codec runs in on a CPU, for
the codec's tests (first chunks, streams decoded together)."""

from __future__ import annotations

import pytest
from helpers import TEST_DEVICE, cpu_settings

from qwen_tts_api.engine.generation import codec_layers
from qwen_tts_api.engine.models.loading import load_model


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def tts(request, demo_models):
    """The package model; its codec in float32, then bfloat16 (the kept weight layouts forgotten after)."""
    settings = cpu_settings(device=TEST_DEVICE, codec_dtype=request.param)
    loaded = load_model("customvoice", demo_models["customvoice"], settings, dtype="float32")
    yield loaded.tts
    codec_layers.forget_kept_weights(loaded.tts.model.speech_tokenizer.model.decoder)
