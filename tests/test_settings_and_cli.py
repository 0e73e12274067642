"""Settings from the environment, and `serve` refusing to start without usable models."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from helpers import decode_audio, hub_cache, serving

from qwen_tts_api.engine.models import precision
from qwen_tts_api.engine.models.directory import ModelDirectoryError, check_model_dir
from qwen_tts_api.engine.models.precision import codec_dtype_for, resolve_dtype
from qwen_tts_api.settings import Settings

SPEC_VARS = [
    "CUSTOMVOICE_MODEL_PATH",
    "BASE_MODEL_PATH",
    "VOICEDESIGN_MODEL_PATH",
    "QWEN_TTS_DEVICE",
    "QWEN_TTS_DTYPE",
    "QWEN_TTS_ATTN",
    "HOST",
    "PORT",
]


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name in SPEC_VARS or name.startswith("QWEN_TTS_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_specification_defaults(clean_env):
    s = Settings()
    assert (s.customvoice_model_path, s.base_model_path) == (None, None)
    # Device "auto" is the specification's cuda:0 where torch sees CUDA (test_device_auto).
    assert (s.device, s.dtype, s.attn, s.host, s.port) == ("auto", "auto", "flash_attention_2", "0.0.0.0", 8000)
    # "auto" is the specification's bfloat16 on its default device (see test_dtype_auto).
    assert s.audio_sample_dirs == [] and s.allow_private_urls is False


def test_every_specification_variable_is_read(clean_env, tmp_path):
    for name, value in {
        "CUSTOMVOICE_MODEL_PATH": str(tmp_path / "cv"),
        "BASE_MODEL_PATH": str(tmp_path / "b"),
        "QWEN_TTS_DEVICE": "cpu",
        "QWEN_TTS_DTYPE": "float32",
        "QWEN_TTS_ATTN": "",
        "HOST": "127.0.0.1",
        "PORT": "9001",
    }.items():
        clean_env.setenv(name, value)
    s = Settings()
    assert s.customvoice_model_path == str(tmp_path / "cv") and s.base_model_path == str(tmp_path / "b")
    assert (s.device, s.dtype, s.attn_implementation, s.host, s.port) == ("cpu", "float32", None, "127.0.0.1", 9001)


def test_audio_sample_dirs_list(clean_env):
    clean_env.setenv("QWEN_TTS_AUDIO_SAMPLE_DIRS", "/srv/a,/srv/b:/srv/c")
    assert Settings().audio_sample_dirs == [Path("/srv/a"), Path("/srv/b"), Path("/srv/c")]


def test_data_dir(clean_env, tmp_path):
    clean_env.delenv("XDG_DATA_HOME", raising=False)
    assert Settings().voices_dir == Path.home() / ".local/share/qwen-tts-api/voices"
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings().data_dir == tmp_path / "xdg/qwen-tts-api"
    clean_env.setenv("QWEN_TTS_DATA_DIR", str(tmp_path / "data"))
    clean_env.setenv("QWEN_TTS_PROMPT_CACHE_SIZE", "0")
    s = Settings()
    assert s.voices_dir == tmp_path / "data/voices" and s.prompt_cache_size == 0


def test_bad_dtype_rejected(clean_env):
    clean_env.setenv("QWEN_TTS_DTYPE", "int3")
    with pytest.raises(ValueError, match="QWEN_TTS_DTYPE"):
        Settings()


def test_model_dir_checks(tmp_path, demo_models):
    with pytest.raises(ModelDirectoryError, match="not a directory"):
        check_model_dir("base", tmp_path / "missing")
    with pytest.raises(ModelDirectoryError, match="no config.json"):
        check_model_dir("base", tmp_path)
    with pytest.raises(ModelDirectoryError, match="needs a 'custom_voice' model"):
        check_model_dir("customvoice", demo_models["base"])
    with pytest.raises(ModelDirectoryError, match="VOICEDESIGN_MODEL_PATH=.* holds a 'custom_voice' model"):
        check_model_dir("voicedesign", demo_models["customvoice"])
    with pytest.raises(ModelDirectoryError, match="holds a 'voice_design' model; BASE_MODEL_PATH needs a 'base'"):
        check_model_dir("base", demo_models["voicedesign"])
    check_model_dir("customvoice", demo_models["customvoice"])
    check_model_dir("base", demo_models["base"])
    check_model_dir("voicedesign", demo_models["voicedesign"])


def test_readme_documents_every_variable():
    """Every variable the server reads has its row in the README's configuration table."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for field in Settings.model_fields.values():
        for name in field.validation_alias.choices:
            assert f"| `{name}` |" in table, name


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SPEC_VARS and not k.startswith(("QWEN_TTS_", "HF_"))}
    return subprocess.run(
        [sys.executable, "main.py"],
        env={**clean, "HF_HUB_OFFLINE": "1", **env},  # tests never reach the network
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )


@pytest.mark.slow  # starts a server
def test_serve_offline_without_the_default_models_cached(tmp_path):
    """With no model variable set, serve uses the Hub's 0.6B models; offline and not cached,
    it exits 2 naming the variable and the id (never the network: HF_HUB_OFFLINE=1)."""
    result = _serve({"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "CUSTOMVOICE_MODEL_PATH=Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice" in result.stderr
    assert "not in the Hugging Face cache" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    result = _serve({"BASE_MODEL_PATH": "someone/no-such-model", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2 and "BASE_MODEL_PATH=someone/no-such-model" in result.stderr


@pytest.mark.slow  # starts a server
def test_hub_ids_and_the_default_models_come_from_the_cache(tmp_path, demo_models):
    """The Hub ids resolve through huggingface_hub's cache, offline: the defaults when no
    model variable is set, named as their repos."""
    hf_home = tmp_path / "hf"
    hub_cache(
        hf_home,
        {
            "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice": demo_models["customvoice"],
            "Qwen/Qwen3-TTS-12Hz-0.6B-Base": demo_models["base"],
        },
    )
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "QWEN_TTS_DATA_DIR": str(tmp_path / "data")}
    with serving(env) as url:
        models = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert models == ["qwen3-tts", "Qwen3-TTS-12Hz-0.6B-CustomVoice", "Qwen3-TTS-12Hz-0.6B-Base"]
        speech = httpx.post(
            f"{url}/v1/audio/speech",
            json={"model": "qwen3-tts", "input": "From the Hub cache.", "voice": "vivian", "response_format": "wav"},
            timeout=120,
        )
        assert speech.status_code == 200 and decode_audio(speech.content).duration > 0.5


@pytest.mark.slow  # starts a server
def test_voicedesign_by_hub_id_with_the_others(tmp_path, demo_models, demo_aligner):
    """All three families by Hub id (offline, from the cache): listed by repo name, with the
    VoiceDesign alias, and the VoiceDesign id as vLLM-Omni's clients send it routes there;
    the aligner by its Hub id too."""
    hf_home = tmp_path / "hf"
    ids = {
        "CUSTOMVOICE_MODEL_PATH": "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
        "BASE_MODEL_PATH": "Qwen/Qwen3-TTS-12Hz-0.6B-Base",
        "VOICEDESIGN_MODEL_PATH": "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign",
    }
    hub_cache(hf_home, dict(zip(ids.values(), (demo_models[k] for k in ("customvoice", "base", "voicedesign")))))
    hub_cache(hf_home, {"Qwen/Qwen3-ForcedAligner-0.6B": demo_aligner})
    ids["ALIGNER_MODEL_PATH"] = "Qwen/Qwen3-ForcedAligner-0.6B"
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "QWEN_TTS_DATA_DIR": str(tmp_path / "data"), **ids}
    with serving(env) as url:
        ready = httpx.get(f"{url}/ready").json()
        assert (ready["word_timings"], ready["aligner"]) == ("aligner", "Qwen3-ForcedAligner-0.6B")
        cards = {m["id"]: m.get("task_type") for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert cards == {
            "qwen3-tts": None,
            "qwen3-tts-voicedesign": "VoiceDesign",
            "Qwen3-TTS-12Hz-0.6B-CustomVoice": "CustomVoice",
            "Qwen3-TTS-12Hz-0.6B-Base": "Base",
            "Qwen3-TTS-12Hz-1.7B-VoiceDesign": "VoiceDesign",
        }
        body = {"input": "Designed.", "instructions": "A calm voice.", "response_format": "pcm", "stream": False}
        by_id = httpx.post(f"{url}/v1/audio/speech", json={**body, "model": ids["VOICEDESIGN_MODEL_PATH"]}, timeout=120)
        by_alias = httpx.post(f"{url}/v1/audio/speech", json={**body, "model": "qwen3-tts-voicedesign"}, timeout=120)
        assert by_id.status_code == 200 and len(by_id.content) > 1920 * 2
        assert by_id.content == by_alias.content


@pytest.mark.slow  # starts a server
def test_serve_demo_answers_speech(tmp_path):
    with serving({"QWEN_TTS_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}, "--demo") as url:
        speech = httpx.post(
            f"{url}/v1/audio/speech",
            json={"model": "qwen3-tts", "input": "Demo.", "voice": "alloy", "response_format": "wav"},
            timeout=120,
        )
        assert speech.status_code == 200 and decode_audio(speech.content).rate == 24000
        designed = httpx.post(
            f"{url}/v1/audio/voices", json={"name": "Demo host", "description": "A calm voice."}, timeout=120
        )
        assert designed.status_code == 200 and designed.json()["type"] == "prompt"
    for family in ("customvoice", "base", "voicedesign"):
        assert (tmp_path / f"data/demo-models/{family}/config.json").is_file()  # built once, kept


def test_device_auto(clean_env):
    import torch

    from qwen_tts_api.engine.models.loading import resolve_device

    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"


def test_the_fast_profile_is_one_switch_on_a_cpu(clean_env, caplog):
    from qwen_tts_api.engine.models.loading import with_profile

    caplog.set_level(logging.INFO, logger="qwen_tts_api.engine.models.loading")
    standard = with_profile(Settings(device="cpu"))
    assert (standard.quantize, standard.compile) == ("none", "auto")
    assert "QWEN_TTS_PROFILE=fast runs int8 weights and the compiled step" in caplog.text
    caplog.clear()
    clean_env.setenv("QWEN_TTS_PROFILE", "fast")
    clean_env.setenv("QWEN_TTS_DEVICE", "cpu")
    fast = with_profile(Settings())
    assert (fast.profile, fast.quantize, fast.compile) == ("fast", "int8", "on")
    assert "CPU setup: int8 weights, compiled step" in caplog.text and "QWEN_TTS_PROFILE=fast runs" not in caplog.text
    clean_env.setenv("QWEN_TTS_COMPILE", "off")  # a setting made by hand stays
    assert (with_profile(Settings()).quantize, with_profile(Settings()).compile) == ("int8", "off")
    # On a GPU its defaults are the fast setup already: the profile changes nothing.
    clean_env.delenv("QWEN_TTS_COMPILE")
    on_gpu = with_profile(Settings(device="cuda:0", profile="fast"))
    assert (on_gpu.quantize, on_gpu.compile) == ("none", "auto")


@pytest.mark.slow  # starts a server
def test_serve_refuses_non_model_directory(tmp_path):
    result = _serve({"BASE_MODEL_PATH": str(tmp_path)})
    assert result.returncode == 2
    assert f"BASE_MODEL_PATH={tmp_path}" in result.stderr and "not a model directory" in result.stderr


@pytest.mark.slow  # starts a server
def test_serve_refuses_missing_cuda(demo_models):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _serve({"CUSTOMVOICE_MODEL_PATH": str(demo_models["customvoice"]), "QWEN_TTS_DEVICE": "cuda:0"})
    assert result.returncode == 2
    assert "QWEN_TTS_DEVICE=cpu" in result.stderr
    # Why torch cannot use CUDA here, as far as the server can tell.
    assert any(cause in result.stderr for cause in ("CPU-only build", "no NVIDIA driver", "driver older"))


def test_flash_attention_that_cannot_import_falls_back_to_sdpa(monkeypatch, caplog):
    """A flash-attn built against another torch is installed but fails to import."""
    import importlib
    import importlib.util

    from qwen_tts_api.engine.models import loading

    real_import = importlib.import_module

    def failing_import(name, *args, **kwargs):
        if name == "flash_attn":
            raise ImportError("undefined symbol: _ZN3c104cuda9SetDevice")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else None)
    monkeypatch.setattr(importlib, "import_module", failing_import)
    with caplog.at_level("WARNING", logger=loading.__name__):
        assert loading.resolve_attention("flash_attention_2", "cuda:0") == "sdpa"
    assert "cannot be imported" in caplog.text and "undefined symbol" in caplog.text
    assert loading.resolve_attention("sdpa", "cuda:0") == "sdpa"


def test_cuda_diagnosis_names_the_likely_cause(monkeypatch):
    import torch

    from qwen_tts_api.engine.models import loading

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(loading, "_nvidia_driver_version", lambda: "535.129.03")
    message = loading.cuda_diagnosis()
    assert "535.129.03" in message and "CUDA 13.0" in message and "driver older" in message
    monkeypatch.setattr(loading, "_nvidia_driver_version", lambda: None)
    assert "no NVIDIA driver was found" in loading.cuda_diagnosis()
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in loading.cuda_diagnosis()


def test_dtype_auto(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="qwen_tts_api.engine.models.precision")
    assert resolve_dtype("auto", "cuda:0") == "bfloat16"
    # A CPU without native bfloat16 (AVX2 only) stays in float32, and the log says why.
    assert resolve_dtype("auto", "cpu", flags={"avx2", "fma"}) == "float32"
    assert "no native bfloat16" in caplog.text
    # With native bfloat16 it is measured; either answer is a real dtype.
    assert resolve_dtype("auto", "cpu", flags={"avx512_bf16"}) in ("bfloat16", "float32")
    assert resolve_dtype("float32", "cuda:0") == "float32"  # an explicit choice is obeyed
    # bfloat16 only where the product is 1.25 times as fast: a near-tie (what a Zen 4 measured
    # with one weight in cache, which went either way from one start to the next) is float32.
    seconds = {torch.float32: 272e-6, torch.bfloat16: 242e-6}
    monkeypatch.setattr(precision, "_seconds_per_product", lambda dtype: seconds[dtype])
    assert resolve_dtype("auto", "cpu", flags={"avx512_bf16"}) == "float32"
    seconds[torch.bfloat16] = 200e-6
    assert resolve_dtype("auto", "cpu", flags={"amx_bf16"}) == "bfloat16"
    # With int8 products the rest runs in float32 on a CPU, unmeasured; CUDA keeps bfloat16.
    assert resolve_dtype("auto", "cpu", flags={"amx_bf16"}, quantize="int8") == "float32"
    assert resolve_dtype("auto", "cuda:0", quantize="int8") == "bfloat16"
    monkeypatch.undo()
    assert precision._seconds_per_product(torch.float32) > 0


def test_codec_dtype_auto(monkeypatch):
    assert codec_dtype_for("auto", "cuda:0", "bfloat16") == "bfloat16"  # the model's, as the package
    assert codec_dtype_for("auto", "cpu", "bfloat16", flags={"avx2", "fma"}) == "float32"  # emulated: slow
    assert codec_dtype_for("bfloat16", "cpu", "float32", flags={"avx2"}) == "bfloat16"  # an explicit choice
    # With native bfloat16 the convolution is measured: bfloat16 only where 1.5 times as fast.
    seconds = {torch.float32: 3.0, torch.bfloat16: 2.5}
    monkeypatch.setattr(precision, "_seconds_per_convolution", lambda dtype: seconds[dtype])
    assert codec_dtype_for("auto", "cpu", "float32", flags={"amx_bf16"}) == "float32"
    seconds[torch.bfloat16] = 1.55  # a Zen 4's ratio (about 2x) with noise against it
    assert codec_dtype_for("auto", "cpu", "float32", flags={"avx512_bf16"}) == "bfloat16"
    monkeypatch.undo()
    assert precision._seconds_per_convolution(torch.float32) > 0


def test_float16_is_obeyed_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="qwen_tts_api.engine.models.precision")
    assert resolve_dtype("float16", "cuda:0") == "float16"
    assert "non-finite logits in the code predictor" in caplog.text
