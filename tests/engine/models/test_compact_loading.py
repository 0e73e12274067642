"""A model loaded on a CPU in its compact form (compact.py) computes exactly what the package's
float32 load does: every weight equal, the text embedding's lookups equal, the int8 layers
those quantised from the float32 weights, and the package's own greedy generation gives the
same audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import cpu_settings
from qwen_tts import Qwen3TTSModel

from qwen_tts_api.devtools.demo_models import build_model
from qwen_tts_api.engine.models.compact import StoredEmbedding, StoredWeights
from qwen_tts_api.engine.models.loading import load_model
from qwen_tts_api.engine.models.quantize import Int8Linear, Int8Part, quantize_int8


@pytest.fixture(scope="module")
def stored_bfloat16(tmp_path_factory) -> dict[str, object]:
    """The demo models stored as the published ones are: the talker in bfloat16."""
    folder = tmp_path_factory.mktemp("bf16")
    kinds = {"customvoice": "custom_voice", "base": "base", "voicedesign": "voice_design"}
    return {kind: build_model(folder / kind, name, seed=3, stored_dtype=torch.bfloat16) for kind, name in kinds.items()}


def package_load(path) -> Qwen3TTSModel:
    return Qwen3TTSModel.from_pretrained(str(path), device_map="cpu", dtype=torch.float32)


def compact_load(kind: str, path, quantize: str = "none"):
    settings = cpu_settings(device="cpu", quantize=quantize, codec_dtype="float32")
    return load_model(kind, path, settings, dtype="float32").tts


def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


@pytest.mark.parametrize("kind", ["customvoice", "base", "voicedesign"])
@torch.inference_mode()
def test_the_compact_load_holds_the_package_weights(stored_bfloat16, demo_models, kind):
    assert StoredWeights.of(stored_bfloat16[kind]).bfloat16 and not StoredWeights.of(demo_models[kind]).bfloat16
    reference, compact = package_load(stored_bfloat16[kind]).model, compact_load(kind, stored_bfloat16[kind]).model
    # Every embedding table (text, codec, the code predictor's) stays as stored, mapped from
    # the file; every lookup gives what the float32 table gives.
    tables = {name: m for name, m in compact.named_modules() if isinstance(m, StoredEmbedding)}
    assert "talker.model.text_embedding" in tables and len(tables) >= 3
    for name, embedding in tables.items():
        assert embedding.table.dtype == torch.bfloat16
        ids = torch.arange(embedding.num_embeddings).view(1, -1)
        assert torch.equal(embedding(ids), reference.get_submodule(name)(ids)), name
    expected, held = tensors(reference), tensors(compact)
    for name in tables:
        del expected[f"{name}.weight"]
    assert expected.keys() == held.keys()
    for name, tensor in expected.items():
        assert held[name].dtype == tensor.dtype and torch.equal(held[name], tensor), name
    codec, reference_codec = compact.speech_tokenizer.model, reference.speech_tokenizer.model
    for name, tensor in tensors(reference_codec.decoder).items():
        assert torch.equal(tensors(codec.decoder)[name], tensor), name
    assert (codec.encoder is not None) == (kind == "base")  # only cloning encodes reference audio


@torch.inference_mode()
def test_the_compact_int8_load_equals_quantising_the_float32_model(stored_bfloat16):
    path = stored_bfloat16["customvoice"]
    reference = package_load(path)
    quantize_int8(reference.model.talker, "dynamic")
    compact = compact_load("customvoice", path, quantize="int8")
    layers = {name: m for name, m in compact.model.named_modules() if isinstance(m, (Int8Linear, Int8Part))}
    expected = {name: m for name, m in reference.model.named_modules() if isinstance(m, (Int8Linear, Int8Part))}
    assert layers.keys() == expected.keys() and len(layers) > 0
    for name, layer in layers.items():
        assert all(torch.equal(a, b) for a, b in zip(layer.int8_weight(), expected[name].int8_weight())), name
    # The package's own greedy generation: the same audio from both.
    call = {"speaker": "Vivian", "language": "English", "do_sample": False, "subtalker_dosample": False}
    (expected_wav,), _ = reference.generate_custom_voice("Compact and quantised.", max_new_tokens=12, **call)
    (wav,), _ = compact.generate_custom_voice("Compact and quantised.", max_new_tokens=12, **call)
    assert wav.size > 0 and np.array_equal(wav, expected_wav)
