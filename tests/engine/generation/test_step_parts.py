"""The compact step's parts that the equivalence tests do not reach: sampling distributions,
int8 layers (both kernels), and a live server running quantised."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from helpers import SR, LiveServer, batch_sizes, cpu_settings, decode_audio
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from qwen_tts_api.engine.generation.sampling import TokenSampler
from qwen_tts_api.engine.models.quantize import Int8Linear, Int8Part


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


@pytest.mark.parametrize(("kernel", "tolerance"), [("weight-only", 0.01), ("dynamic", 0.03)])
@torch.inference_mode()
def test_int8_linear_is_close_to_its_float_layer(kernel, tolerance):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(256, n, bias=False) for n in (128, 64, 64)]
    x = torch.randn(3, 1, 256)
    quantised = [Int8Linear.of(layer, kernel) for layer in layers]
    for layer, q in zip(layers, quantised):
        exact = layer(x)
        weight, scale = q.int8_weight()
        assert weight.dtype == torch.int8 and scale.shape == (layer.out_features,)
        assert float((q(x) - exact).norm() / exact.norm()) < tolerance
    # Layers quantised together give the same outputs as each alone; their parts (the
    # package's q, k, v modules) take their columns of one product, in any order of calls.
    separate = torch.cat([q(x) for q in quantised], dim=-1)
    whole = Int8Linear.of(layers, kernel)
    assert whole.kernel == kernel and torch.equal(whole(x), separate)
    parts = whole.parts([128, 64, 64])
    assert Int8Linear.joined(parts) is whole and Int8Linear.joined(parts[::-1]) is not whole
    assert torch.equal(torch.cat([part(x) for part in parts], dim=-1), separate)
    y = torch.randn(3, 1, 256)
    assert torch.equal(parts[1](y), whole(y)[..., 128:192]) and torch.equal(parts[0](x), separate[..., :128])
    # Separate layers joined later: one layer with their weights side by side.
    assert torch.equal(Int8Linear.joined(quantised)(x), separate)


@torch.inference_mode()
def test_the_dynamic_int8_kernel_keeps_only_the_packed_weights():
    layer = Int8Linear.of(torch.nn.Linear(1024, 3072, bias=False), "dynamic")
    assert list(layer.buffers()) == [] and list(layer.parameters()) == []
    assert layer.int8_weight()[0].shape == (3072, 1024)


@torch.inference_mode()
def test_the_dynamic_int8_kernel_is_batch_invariant():
    """Activations are quantised per row: a row's output is the same alone, in any batch,
    and whatever its neighbours hold (fbgemm alone would share one scale across rows)."""
    torch.manual_seed(0)
    layer = Int8Linear.of(torch.nn.Linear(512, 384), "dynamic")
    x = torch.randn(8, 512)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(8)])
    for rows in range(1, 9):
        assert torch.equal(layer(x[:rows]), alone[:rows])
    loud = x.clone()
    loud[5] *= 1000  # a neighbour with a far larger range
    assert torch.equal(layer(loud)[:5], alone[:5])


def batched(server: LiveServer, http: httpx.Client, seeded: dict, *more: str) -> bytes:
    """The audio of ``seeded`` sent together with other requests, checked to have been
    generated in one batch with them."""
    others = ("Another one.", "And a third, a little longer than the others.", *more)
    with batch_sizes(server.app.state.server.engine) as rows, ThreadPoolExecutor(1 + len(others)) as pool:
        together = pool.submit(http.post, "/v1/audio/speech", json=seeded)
        for text in others:
            pool.submit(http.post, "/v1/audio/speech", json={**seeded, "input": text, "seed": 5})
        audio = together.result().content
    assert max(rows) > 1
    return audio


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("quantize", ["int8", "int8-weight-only"])
def test_a_server_quantised_to_int8_speaks(demo_models, quantize):
    # float32 around the int8 products: on a CPU with AMX, QWEN_TTS_DTYPE=auto is bfloat16, whose
    # products are not batch-invariant there (int8-weight-only's seeded rows then differed batched).
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], quantize=quantize)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        talker = server.app.state.server.engine.models["customvoice"].tts.model.talker
        layer = talker.code_predictor.model.layers[0]
        attention = talker.model.layers[0].self_attn
        assert isinstance(layer.mlp.down_proj, Int8Linear) and isinstance(attention.q_proj, Int8Part)
        # q, k and v are one int8 layer (one copy of their weights), which the step calls too.
        assert attention.q_proj.whole is attention.k_proj.whole is attention.v_proj.whole
        step = server.app.state.server.engine.scheduler.runner._parts["customvoice"]
        assert step.stack.layers[0].qkv.__self__ is attention.q_proj.whole
        assert layer.mlp.down_proj.kernel == ("dynamic" if quantize == "int8" else "weight-only")
        assert isinstance(talker.codec_head, torch.nn.Linear)  # the logits stay in the model dtype
        r = http.post(
            "/v1/audio/speech",
            json={"model": "qwen3-tts", "input": "Hello there, quantised.", "voice": "alloy", "response_format": "wav"},
        )
        assert r.status_code == 200
        audio = decode_audio(r.content, "wav")
        assert audio.rate == SR and audio.duration > 0.2
        assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() > 0
        # A seeded request is the same alone and batched with others, quantised too.
        seeded = {"model": "qwen3-tts", "voice": "vivian", "input": "Seeded and quantised.", "stream": False}
        seeded |= {"response_format": "pcm", "seed": 99, "temperature": 0.9}
        alone = http.post("/v1/audio/speech", json=seeded).content
        assert batched(server, http, seeded, "Four.") == alone


@pytest.mark.slow  # starts a server
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


@pytest.mark.slow  # starts a server
def test_a_compiled_server_speaks_as_the_eager_one(demo_models, tmp_path, monkeypatch):
    """QWEN_TTS_COMPILE=on: the step's graphs are compiled during warm-up (before /ready, which
    says they run) and kept in the data directory; requests then give the eager server's
    audio, alone and batched."""
    # Unset for the server to set (to its data directory), and unset again after the test.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    seeded = {"model": "qwen3-tts", "voice": "vivian", "input": "Compiled or not.", "stream": False}
    seeded |= {"response_format": "pcm", "seed": 7, "temperature": 0.9}
    # float32 (cpu_settings') and unquantised: the compiled kernels (fused norms, attention over
    # the whole cache) round differently from the eager ones in the last bit, too little to
    # change a seeded draw. int8 activations now and then turn such a bit into a whole
    # quantisation step, and a sampled token with it (README: QWEN_TTS_COMPILE); the int8
    # graphs are checked greedily (tests/engine/generation/test_batching.py), where they give the eager codes.
    base = dict(customvoice_model_path=demo_models["customvoice"])
    with LiveServer(cpu_settings(**base)) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        eager = http.post("/v1/audio/speech", json=seeded).content
    compiled_settings = cpu_settings(**base, compile="on", data_dir=tmp_path)
    with LiveServer(compiled_settings) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        assert server.app.state.server.engine.runner.compiled_rows("customvoice") == 1  # on a CPU: batches step eagerly
        ready = http.get("/ready")
        assert ready.status_code == 200 and ready.json()["step"] == "compiled"
        assert any((tmp_path / "compile-cache").iterdir()), "compiled graphs are kept in the data directory"
        compiles = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert compiles >= 3, "the talker step for one row, the code predictor's frame for one row and several"
        assert http.post("/v1/audio/speech", json=seeded).content == eager
        assert batched(server, http, seeded) == eager
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiles, "warm-up compiled every graph"
