"""Demo models load through the real qwen_tts path, know the speakers and languages, and sound."""

import hashlib
import json

import numpy as np
import pytest
import torch
from qwen_tts import Qwen3TTSModel

from qwen_tts_api.cli import main
from qwen_tts_api.devtools.demo_models import (
    COMMON_WORDS,
    PUBLISHED,
    PUBLISHED_TOKEN_IDS,
    build_model,
    build_text_tokenizer,
    published_config,
    speech_tokenizer_config,
)
from qwen_tts_api.engine.models.directory import check_model_dir

SPEAKERS = {"vivian", "serena", "uncle_fu", "dylan", "eric", "ryan", "aiden", "ono_anna", "sohee"}
LANGUAGES = {
    "auto",
    "english",
    "chinese",
    "japanese",
    "korean",
    "french",
    "german",
    "spanish",
    "italian",
    "portuguese",
    "russian",
}


@pytest.fixture(scope="module")
def customvoice(demo_models):
    return Qwen3TTSModel.from_pretrained(str(demo_models["customvoice"]), device_map="cpu", dtype=torch.float32)


def test_published_layout(demo_models):
    for kind, path in demo_models.items():
        check_model_dir(kind, path)
        for name in [
            "config.json",
            "model.safetensors",
            "generation_config.json",
            "vocab.json",
            "merges.txt",
            "tokenizer_config.json",
            "speech_tokenizer/config.json",
            "speech_tokenizer/model.safetensors",
            "speech_tokenizer/preprocessor_config.json",
        ]:
            assert (path / name).is_file(), name


def test_speakers_and_languages(customvoice):
    assert set(customvoice.get_supported_speakers()) == SPEAKERS
    assert set(customvoice.get_supported_languages()) == LANGUAGES


def test_audible_and_deterministic(customvoice):
    a, sr = customvoice.generate_custom_voice("Hello there.", speaker="Vivian", language="English", max_new_tokens=12)
    b, _ = customvoice.generate_custom_voice("Hello there.", speaker="Vivian", language="English", max_new_tokens=12)
    assert sr == 24000
    assert np.sqrt(np.mean(a[0] ** 2)) > 0.01
    assert np.array_equal(a[0], b[0])
    c, _ = customvoice.generate_custom_voice("Hello there.", speaker="Ryan", language="English", max_new_tokens=12)
    assert not np.array_equal(a[0], c[0]), "speakers condition the output"


def test_base_model_clones(demo_models):
    base = Qwen3TTSModel.from_pretrained(str(demo_models["base"]), device_map="cpu", dtype=torch.float32)
    ref = (0.3 * np.sin(2 * np.pi * 220 * np.arange(24000) / 24000)).astype(np.float32)
    wavs, sr = base.generate_voice_clone(
        "Hi.", language="Auto", ref_audio=(ref, 24000), x_vector_only_mode=True, max_new_tokens=8
    )
    assert sr == 24000 and np.sqrt(np.mean(wavs[0] ** 2)) > 0.01


@pytest.mark.slow  # loads and runs a third model
def test_voicedesign_model_designs_through_the_package(demo_models):
    """Loaded and spoken through the package's own VoiceDesign path: no speakers, the
    description conditions the output, and the 1.7B tag (VoiceDesign is published at 1.7B only)."""
    design = Qwen3TTSModel.from_pretrained(str(demo_models["voicedesign"]), device_map="cpu", dtype=torch.float32)
    assert design.model.tts_model_type == "voice_design" and design.model.tts_model_size == "1b7"
    assert not design.get_supported_speakers()
    assert set(design.get_supported_languages()) == LANGUAGES

    def speak(description):
        wavs, sr = design.generate_voice_design(
            "Hello there.", instruct=description, language="English", max_new_tokens=12
        )
        assert sr == 24000
        return wavs[0]

    warm = speak("A warm alto.")
    assert np.sqrt(np.mean(warm**2)) > 0.01
    assert np.array_equal(warm, speak("A warm alto."))
    assert not np.array_equal(warm, speak("A bright tenor.")), "the description conditions the output"


def _weights_digest(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_same_seed_same_weights(tmp_path, demo_models):
    build_model(tmp_path / "again", "custom_voice", seed=0)
    assert _weights_digest(tmp_path / "again") == _weights_digest(demo_models["customvoice"])
    build_model(tmp_path / "other", "custom_voice", seed=1)
    assert _weights_digest(tmp_path / "other") != _weights_digest(demo_models["customvoice"])


def test_files_are_world_readable(demo_models):
    """A container's unprivileged user must be able to read demo models made on the host."""
    import stat

    for root in demo_models.values():
        for path in [root, *root.rglob("*")]:
            mode = path.stat().st_mode
            assert mode & stat.S_IROTH, f"{path} is not readable by others"
            if path.is_dir():
                assert mode & stat.S_IXOTH, f"{path} cannot be entered by others"


def test_published_sizes_use_the_released_configurations():
    """--size 0.6b/1.7b write the released config.json verbatim (CustomVoice), and Base is
    the same model without speakers and with a speaker encoder as wide as the talker."""
    for size in ("0.6b", "1.7b"):
        released = json.loads((PUBLISHED / f"{size}-customvoice.config.json").read_text())
        assert published_config(size, "custom_voice") == released
        base = published_config(size, "base")
        assert base["tts_model_type"] == "base" and base["talker_config"]["spk_id"] == {}
        assert base["speaker_encoder_config"]["enc_dim"] == released["talker_config"]["hidden_size"]
        # VoiceDesign: the same model with neither speakers nor a speaker encoder of its own.
        design = published_config(size, "voice_design")
        assert design["tts_model_type"] == "voice_design" and design["talker_config"]["spk_id"] == {}
        assert design["talker_config"]["spk_is_dialect"] == {}
        assert design["talker_config"]["hidden_size"] == released["talker_config"]["hidden_size"]
        assert design.get("speaker_encoder_config") == released.get("speaker_encoder_config")
    small, large = (published_config(size, "custom_voice")["talker_config"] for size in ("0.6b", "1.7b"))
    assert (small["hidden_size"], large["hidden_size"], large["intermediate_size"]) == (1024, 2048, 6144)
    assert small["code_predictor_config"] == large["code_predictor_config"]
    decoder = speech_tokenizer_config("0.6b")["decoder_config"]
    assert (decoder["latent_dim"], decoder["decoder_dim"], decoder["num_hidden_layers"]) == (1024, 1536, 8)


def test_published_token_ids_are_where_the_config_expects_them(tmp_path):
    from transformers import AutoTokenizer

    ids = build_text_tokenizer(tmp_path, PUBLISHED_TOKEN_IDS)
    config = published_config("0.6b", "custom_voice")
    assert ids["<|im_start|>"] == config["im_start_token_id"] and ids["<tts_pad>"] == config["tts_pad_token_id"]
    assert (ids["<tts_text_bos>"], ids["<tts_text_eod>"]) == (config["tts_bos_token_id"], config["tts_eos_token_id"])
    tokens = AutoTokenizer.from_pretrained(str(tmp_path))("<|im_start|>assistant\nHi<|im_end|>\n")["input_ids"]
    assert tokens[0] == 151644 and 151645 in tokens and max(tokens) < config["talker_config"]["text_vocab_size"]


def test_benchmark_models_read_common_words_as_one_token_each(tmp_path):
    """The published sizes' tokenizer (benchmarks) spells common English words as single
    tokens, as the real vocabulary does, so a benchmark's prompt is as long as a real one;
    the prompt template's tokens and the special ids stay where the package expects them."""
    from transformers import AutoTokenizer

    build_text_tokenizer(tmp_path, PUBLISHED_TOKEN_IDS, COMMON_WORDS)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "The quick brown fox jumps over the lazy dog, and keeps running far beyond the hills."
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert pieces[:4] == ["The", "Ġquick", "Ġbrown", "Ġfox"] and len(pieces) == 18
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert len(tokenizer("Zyxw")["input_ids"]) > 1  # other words: pieces, down to bytes
    template = tokenizer("<|im_start|>assistant\nHi<|im_end|>\n")["input_ids"]
    assert template[0] == 151644 and len(template) == 7 and 151645 in template


def test_demo_models_command_writes_the_frame_budget(tmp_path):
    assert main(["demo-models", str(tmp_path), "--max-frames", "7"]) == 0
    for kind in ("customvoice", "base", "voicedesign"):
        assert json.loads((tmp_path / kind / "generation_config.json").read_text())["max_new_tokens"] == 7
    aligner = json.loads((tmp_path / "aligner" / "config.json").read_text())  # the demo aligner beside them
    assert aligner["thinker_config"]["model_type"] == "qwen3_forced_aligner"
    with pytest.raises(SystemExit):
        main(["demo-models", str(tmp_path / "x"), "--size", "3b"])
