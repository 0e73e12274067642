"""The lean step's parts that the equivalence tests do not reach: sampling distributions,
int8 weight-only layers, and a live server running quantised."""

import httpx
import numpy as np
import pytest
import torch
from helpers import SR, LiveServer, cpu_settings, decode_audio
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from qwen_tts_api.engine.generation.sampling import TokenSampler
from qwen_tts_api.engine.models.quantize import Int8Linear


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (0, 0.7), (10, 1.0), (10, 0.8)])
def test_sampling_follows_hugging_face_warpers(top_k, top_p):
    """Our sampler draws from the distribution Hugging Face's temperature, top-k and top-p
    warpers leave (the package samples through them), never outside its support."""
    torch.manual_seed(0)
    scores = torch.randn(1, 40) * 2
    reference = scores / 0.9
    if top_k:
        reference = TopKLogitsWarper(top_k)(None, reference)
    if top_p < 1.0:
        reference = TopPLogitsWarper(top_p)(None, reference)
    expected = reference.softmax(-1)[0]
    draws = 40000
    tokens = TokenSampler(True, top_k, top_p, 0.9).choose(scores.repeat(draws, 1))
    seen = torch.bincount(tokens, minlength=40) / draws
    assert torch.equal(seen > 0, expected > 0)
    assert float((seen - expected).abs().max()) < 0.01


@torch.inference_mode()
def test_int8_linear_is_close_to_its_float_layer():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(256, n, bias=False) for n in (128, 64, 64)]
    x = torch.randn(3, 1, 256)
    quantised = [Int8Linear.of(layer) for layer in layers]
    for layer, q in zip(layers, quantised):
        exact = layer(x)
        assert q.weight_int8.dtype == torch.int8
        assert float((q(x) - exact).norm() / exact.norm()) < 0.02
    # Joined layers give the same outputs as the separate ones, and share their memory.
    separate = torch.cat([q(x) for q in quantised], dim=-1)
    joined = Int8Linear.joined(quantised)
    assert torch.equal(joined(x), separate)
    assert quantised[1].weight_int8.data_ptr() == joined.weight_int8[128:].data_ptr()


def test_a_server_quantised_to_int8_speaks(demo_models):
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], quantize="int8", dtype="auto")
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        talker = server.app.state.server.engine.models["customvoice"].tts.model.talker
        layer = talker.code_predictor.model.layers[0]
        assert isinstance(layer.mlp.down_proj, Int8Linear) and isinstance(
            talker.model.layers[0].self_attn.q_proj, Int8Linear
        )
        assert isinstance(talker.codec_head, torch.nn.Linear)  # the logits stay in the model dtype
        r = http.post(
            "/v1/audio/speech",
            json={"model": "qwen3-tts", "input": "Hello there, quantised.", "voice": "alloy", "response_format": "wav"},
        )
        assert r.status_code == 200
        audio = decode_audio(r.content, "wav")
        assert audio.rate == SR and audio.duration > 0.2
        assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() > 0


def test_bfloat16_on_a_cpu_keeps_the_codec_in_float32(demo_models):
    """The talker and code predictor run in bfloat16 when asked; the codec stays in float32
    on a CPU (bfloat16 convolutions are many times slower there), and speech still works."""
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], dtype="bfloat16")
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        model = server.app.state.server.engine.models["customvoice"].tts.model
        assert model.talker.codec_head.weight.dtype == torch.bfloat16
        assert {p.dtype for p in model.speech_tokenizer.model.parameters()} == {torch.float32}
        r = http.post(
            "/v1/audio/speech",
            json={
                "model": "qwen3-tts",
                "input": "Half precision, whole codec.",
                "voice": "alloy",
                "response_format": "flac",
            },
        )
        assert r.status_code == 200
        audio = decode_audio(r.content, "flac")
        assert audio.rate == SR and audio.duration > 0.2 and np.abs(audio.samples).max() > 0
