"""Tiny random-weight Qwen3-TTS checkpoints with the published file layout.

They load through the real ``qwen_tts.Qwen3TTSModel.from_pretrained`` path, so tests and
demos exercise every line the server runs with real weights. They make noise, not
speech. ``size="tiny"`` (tests, demos) is small enough to build in seconds; ``"0.6b"`` and
``"1.7b"`` write the published ``config.json`` and speech-tokenizer decoder configuration
verbatim (``published/``) with random weights, for benchmarks at real scale.

The three families differ in their config only: CustomVoice has the nine speakers, Base a
speaker encoder and no speakers, VoiceDesign neither (the voice comes from the
instruction). Qwen publishes VoiceDesign at 1.7B only; a ``0.6b`` VoiceDesign demo has the
0.6B shape, which serves as a faster stand-in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Speaker ids, dialects and language ids follow the published CustomVoice config where
# they are known; the exact numbers only need to be valid codec-vocabulary rows.
SPEAKER_IDS: dict[str, int] = {
    "vivian": 3065,
    "serena": 3066,
    "uncle_fu": 3010,
    "dylan": 2878,
    "eric": 2875,
    "ryan": 3061,
    "aiden": 2861,
    "ono_anna": 2873,
    "sohee": 2864,
}
SPEAKER_DIALECTS: dict[str, str | bool] = dict.fromkeys(SPEAKER_IDS, False) | {
    "eric": "sichuan_dialect",
    "dylan": "beijing_dialect",
}
LANGUAGE_IDS: dict[str, int] = {
    "english": 2050,
    "german": 2053,
    "spanish": 2054,
    "chinese": 2055,
    "japanese": 2058,
    "french": 2061,
    "sichuan_dialect": 2062,
    "korean": 2064,
    "russian": 2069,
    "italian": 2070,
    "portuguese": 2071,
    "beijing_dialect": 2074,
}
CODEC_IDS = {
    "codec_pad_id": 2148,
    "codec_bos_id": 2149,
    "codec_eos_token_id": 2150,
    "codec_think_id": 2154,
    "codec_nothink_id": 2155,
    "codec_think_bos_id": 2156,
    "codec_think_eos_id": 2157,
}
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
]
# Where the published checkpoints keep their text special tokens (Qwen2 vocabulary ids).
PUBLISHED_TOKEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<tts_pad>": 151671,
    "<tts_text_bos>": 151672,
    "<tts_text_eod>": 151673,
}
PUBLISHED = Path(__file__).parent / "published"
SIZES = ("tiny", "0.6b", "1.7b")
# Each family's directory (as build_demo_models names it), its tts_model_type and weight seed offset.
DEMO_FAMILIES = {"customvoice": ("custom_voice", 0), "base": ("base", 100), "voicedesign": ("voice_design", 200)}
KINDS = tuple(kind for kind, _ in DEMO_FAMILIES.values())
# Words the prompt template relies on being single tokens ("<|im_start|>assistant\n").
SINGLE_TOKEN_WORDS = ["assistant", "user"]
# Common English words (and the benchmarks' own), each one token in the published-size models'
# tokenizer, as in Qwen's real vocabulary: without them every letter is a token and a
# benchmark's prompt is three times as long as the real model's, which inflates its prefill.
_COMMON_WORDS_TEXT = """
the be to of and a in that have i it for not on with he as you do at this but his by from they
we say her she or an will my one all would there their what so up out if about who get which go
me when make can like time no just him know take people into year your good some could them see
other than then now look only come its over think also back after use two how our work first well
way even new want because any these give day most us is are was were been has had did said does
made here more very much many such own same each few where why while through down before off again
still under between never always every should may might must shall let keep keeps kept long great
little old right big high small large next early young important public bad able last far near hello
thank thanks please yes today tomorrow yesterday morning evening night weather sunny rain world life
hand part place case week company system program question government number point home water room
mother father area money story fact month lot book eye job word business issue side kind head house
service friend power hour game line end member law car city name president team minute idea body
information school face others level office door health person art war history party result change
reason research girl guy moment air teacher force education voice speech speak speaking spoke said
tell told call called ask asked need needed feel felt become became leave left put mean meant begin
began seem seemed help helped talk talked turn turned start started show showed hear heard play
played run running move moved live lived believe hold bring happen write provide sit stand lose pay
meet include continue set learn lead understand watch follow stop create open walk win offer remember
love consider appear buy wait serve die send expect build stay fall cut reach kill remain suggest
raise pass sell require report decide pull generated generate faster fast slow quick quickly brown
fox jumps jump lazy dog cat beyond hill hills ladies gentlemen hope benchmark sentence server test
audio sound music read reading text model request requests stream streaming response answer
"""
COMMON_WORDS = _COMMON_WORDS_TEXT.split()


@dataclass(frozen=True)
class ModelShape:
    """Talker and code-predictor sizes of a tiny model (the published sizes come from their configs)."""

    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    text_hidden: int = 32
    predictor_layers: int = 1
    predictor_intermediate: int = 128
    size_tag: str = "0b6"

    @classmethod
    def tiny(cls) -> ModelShape:
        return cls()

    @property
    def mrope_section(self) -> list[int]:
        # Published checkpoints split head_dim/2 = 64 rotary pairs as [24, 20, 20].
        half = self.head_dim // 2
        first = half - 2 * (half * 20 // 64)
        return [first, (half - first) // 2, (half - first) // 2]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_text_tokenizer(
    directory: Path,
    special_ids: dict[str, int] | None = None,
    words: list[str] | None = None,
    specials: list[str] = SPECIAL_TOKENS,
    named_specials: dict[str, str] | None = None,
) -> dict[str, int]:
    """Write a small byte-level BPE Qwen2 tokenizer; return its special tokens' ids.

    By default special tokens sit right after the byte alphabet and merges, so the text
    embedding table stays small. ``special_ids`` pins them where a published vocabulary has
    them instead (the ids in between stay unused). ``words``: English words that become one
    token each (alone, capitalised, and after a space), as a real vocabulary has them; the
    other text is spelt byte by byte. ``specials``: the special tokens (the first is the
    end of text); ``named_specials``: attributes of the tokenizer naming some of them (the
    aligner's processor reads ``audio_token``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    qwen2_pattern = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(qwen2_pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    vocab, merges = _word_merges(pre_tokenizer, words) if words else _template_merges()
    for token in specials:
        vocab[token] = (special_ids or {}).get(token, len(vocab))
    taken = set(vocab.values())
    # Placeholders fill the ids a published vocabulary uses for words we never need
    # (a vocabulary with holes cannot be saved cleanly); nothing ever merges into them.
    vocab.update({f"<|unused_{i}|>": i for i in range(max(taken)) if i not in taken})
    bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    fast = Qwen2TokenizerFast(
        tokenizer_object=tok,
        unk_token=None,
        bos_token=None,
        eos_token=specials[0],
        pad_token=specials[0],
        additional_special_tokens=specials[1:],
        model_max_length=131072,
        extra_special_tokens=named_specials or {},
    )
    fast.save_pretrained(str(directory))
    # The package loads the processor with tokenizer_class "Qwen2Tokenizer".
    cfg_path = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    _write_json(cfg_path, cfg)
    ids = {token: fast.convert_tokens_to_ids(token) for token in specials}
    assert all(isinstance(i, int) for i in ids.values())
    return ids  # type: ignore[return-value]  # each one an int, checked above


def write_text_tokenizer(directory: Path, size: str) -> dict[str, int]:
    """The text tokenizer a demo model of ``size`` has, written into ``directory``: the tiny
    models' keeps its ids small; the published sizes' has the published special ids and
    reads common English words whole (benchmarks). Returns the special tokens' ids."""
    if size == "tiny":
        return build_text_tokenizer(directory)
    return build_text_tokenizer(directory, PUBLISHED_TOKEN_IDS, COMMON_WORDS)


def _template_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte alphabet and the merges that make the prompt template's words single tokens."""
    from tokenizers import pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    for word in SINGLE_TOKEN_WORDS:
        prefix = word[0]
        for ch in word[1:]:
            merges.append((prefix, ch))
            prefix += ch
            vocab.setdefault(prefix, len(vocab))
    return vocab, merges


def _word_merges(pre_tokenizer, words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte alphabet and the BPE merges that make each of ``words`` one token (the prompt
    template's as they are; the others also capitalised, and each after a space), learnt by
    the tokenizers library's trainer so the merges never compete with one another."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    forms = list(SINGLE_TOKEN_WORDS)
    for word in dict.fromkeys(w for w in words if w not in SINGLE_TOKEN_WORDS):
        forms += [word, f" {word}", word.capitalize(), f" {word.capitalize()}"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + sum(map(len, forms)) + 1,  # room for every merge: all words whole
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(forms, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges  # type: ignore[return-value]  # pairs, split above


def _talker_config(shape: ModelShape, text_vocab_size: int, with_speakers: bool) -> dict:
    rope = {"rope_type": "default", "mrope_section": shape.mrope_section, "interleaved": True}
    return {
        "vocab_size": 3072,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000,
        "rope_scaling": rope,
        "num_code_groups": 16,
        "text_hidden_size": shape.text_hidden,
        "text_vocab_size": text_vocab_size,
        **CODEC_IDS,
        "spk_id": dict(SPEAKER_IDS) if with_speakers else {},
        "spk_is_dialect": dict(SPEAKER_DIALECTS) if with_speakers else {},
        "codec_language_id": dict(LANGUAGE_IDS),
        "code_predictor_config": {
            "vocab_size": 2048,
            "hidden_size": shape.hidden,
            "intermediate_size": shape.predictor_intermediate,
            "num_hidden_layers": shape.predictor_layers,
            "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads,
            "head_dim": shape.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": 65536,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000,
            "num_code_groups": 16,
        },
    }


def speech_tokenizer_config(size: str) -> dict:
    """A 12 Hz codec (24 kHz, 1920 samples a frame): tiny widths, or the published decoder
    with a Mimi encoder of the published widths (the package's Mimi defaults)."""
    config = _tiny_speech_tokenizer_config()
    if size != "tiny":
        config["decoder_config"] = json.loads((PUBLISHED / "speech-tokenizer-12hz.config.json").read_text())[
            "decoder_config"
        ]
        config["encoder_config"] = {
            "sampling_rate": 24000,
            "frame_rate": 12.5,
            "codebook_size": 2048,
            "num_quantizers": 32,
            "num_semantic_quantizers": 1,
            "use_cache": False,
        }
    return config


def _tiny_speech_tokenizer_config() -> dict:
    return {
        "model_type": "qwen3_tts_tokenizer_12hz",
        "architectures": ["Qwen3TTSTokenizerV2Model"],
        "encoder_valid_num_quantizers": 16,
        "input_sample_rate": 24000,
        "output_sample_rate": 24000,
        "decode_upsample_rate": 1920,
        "encode_downsample_rate": 1920,
        "encoder_config": {
            "sampling_rate": 24000,
            "frame_rate": 12.5,
            "hidden_size": 32,
            "num_filters": 4,
            "num_residual_layers": 1,
            "upsampling_ratios": [8, 6, 5, 4],
            "upsample_groups": 32,
            "num_hidden_layers": 1,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "codebook_size": 2048,
            "codebook_dim": 16,
            "vector_quantization_hidden_dimension": 16,
            "num_quantizers": 16,
            "num_semantic_quantizers": 1,
            "use_cache": False,
        },
        "decoder_config": {
            "codebook_size": 2048,
            "codebook_dim": 16,
            "hidden_size": 32,
            "latent_dim": 32,
            "head_dim": 16,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_quantizers": 16,
            "sliding_window": 72,
            "upsample_rates": [8, 5, 4, 3],
            "upsampling_ratios": [2, 2],
            "decoder_dim": 64,
        },
    }


def _reinitialise(module, seed: int) -> None:
    """Fan-in scaled init so activations neither vanish nor explode through the tiny stack."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() >= 2:
                fan_in = math.prod(param.shape[1:]) if "embed" not in name else 1
                std = 1.0 / math.sqrt(max(fan_in, 1))
                if "embed" in name or "codebook" in name:
                    std = 1.0
                param.copy_(torch.randn(param.shape, generator=gen) * std)
            elif name.endswith("bias"):
                param.zero_()


def _tiny_config(kind: str, shape: ModelShape, token_id: dict[str, int]) -> dict:
    return {
        "model_type": "qwen3_tts",
        "architectures": ["Qwen3TTSForConditionalGeneration"],
        "tokenizer_type": "qwen3_tts_tokenizer_12hz",
        "tts_model_size": shape.size_tag,
        "tts_model_type": kind,
        "im_start_token_id": token_id["<|im_start|>"],
        "im_end_token_id": token_id["<|im_end|>"],
        "tts_pad_token_id": token_id["<tts_pad>"],
        "tts_bos_token_id": token_id["<tts_text_bos>"],
        "tts_eos_token_id": token_id["<tts_text_eod>"],
        "talker_config": _talker_config(shape, max(token_id.values()) + 1, with_speakers=(kind == "custom_voice")),
        # The speaker-encoder sub-config must not carry a model_type key.
        "speaker_encoder_config": {
            "mel_dim": 128,
            "enc_dim": shape.hidden,
            "enc_channels": [32, 32, 32, 32, 96],
            "enc_kernel_sizes": [5, 3, 3, 3, 1],
            "enc_dilations": [1, 2, 3, 4, 1],
            "enc_attention_channels": 16,
            "enc_res2net_scale": 8,
            "enc_se_channels": 16,
            "sample_rate": 24000,
        },
    }


def published_config(size: str, kind: str) -> dict:
    """The published CustomVoice ``config.json`` of ``size``; for Base and VoiceDesign the
    same model without built-in speakers, Base with a speaker encoder (the package's default
    widths)."""
    config = json.loads((PUBLISHED / f"{size}-customvoice.config.json").read_text(encoding="utf-8"))
    if kind != "custom_voice":
        config["tts_model_type"] = kind
        config["talker_config"]["spk_id"] = {}
        config["talker_config"]["spk_is_dialect"] = {}
    if kind == "base":
        config["speaker_encoder_config"] = {"enc_dim": config["talker_config"]["hidden_size"]}
    return config


def build_model(
    directory: Path,
    kind: str,
    seed: int = 0,
    shape: ModelShape | None = None,
    generation: dict | None = None,
    size: str = "tiny",
    stored_dtype: Any = None,
) -> Path:
    """Write one checkpoint. ``kind`` is one of ``KINDS``; ``size`` one of
    ``SIZES`` (``shape`` varies the tiny one); ``generation`` overrides entries of its
    generation_config.json; ``stored_dtype`` the talker's torch dtype on disk (None: float32
    for tiny models, bfloat16 as published for the published sizes)."""
    import torch
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r} (one of {', '.join(SIZES)})")
    directory.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        # VoiceDesign is published at 1.7B only: its tiny model says so (instructions are kept).
        shape = shape or (ModelShape(size_tag="1b7") if kind == "voice_design" else ModelShape.tiny())
        config_dict = _tiny_config(kind, shape, write_text_tokenizer(directory, size))
    else:
        write_text_tokenizer(directory, size)
        config_dict = published_config(size, kind)
    torch.manual_seed(seed)
    config = Qwen3TTSConfig(**config_dict)
    model = Qwen3TTSForConditionalGeneration(config)
    _reinitialise(model, seed)
    with torch.no_grad():
        # The end-of-speech logit stays at zero so greedy decoding of random weights runs to
        # the token budget: output length then follows the input length deterministically.
        model.talker.codec_head.weight[CODEC_IDS["codec_eos_token_id"]].zero_()
    if stored_dtype is None:  # as published (half the disk and write time of float32); tiny models: float32
        stored_dtype = torch.float32 if size == "tiny" else torch.bfloat16
    model.to(stored_dtype)
    model.save_pretrained(str(directory), safe_serialization=True)
    if size == "tiny":
        # save_pretrained writes the class defaults; keep our exact dict (no nested model_type).
        config_dict = {**json.loads((directory / "config.json").read_text(encoding="utf-8")), **config_dict}
    _write_json(directory / "config.json", config_dict)
    # Tiny models decode greedily, so demo output is deterministic; published sizes sample
    # as the published checkpoints do. The budget comes from the server unless given here.
    sampling = size != "tiny"
    _write_json(
        directory / "generation_config.json",
        {
            "do_sample": sampling,
            "top_k": 50,
            "top_p": 1.0,
            "temperature": 0.9,
            "repetition_penalty": 1.05,
            "subtalker_dosample": sampling,
            "subtalker_top_k": 50,
            "subtalker_top_p": 1.0,
            "subtalker_temperature": 0.9,
            "max_new_tokens": 8192,
            **(generation or {}),
        },
    )

    codec_dir = directory / "speech_tokenizer"
    codec_dir.mkdir(exist_ok=True)
    codec_cfg = Qwen3TTSTokenizerV2Config(
        **{k: v for k, v in speech_tokenizer_config(size).items() if k != "model_type"}
    )
    codec = Qwen3TTSTokenizerV2Model(codec_cfg)
    _reinitialise(codec, seed + 1)
    with torch.no_grad():
        # Keep the waveform well inside [-1, 1] (the decoder clamps) so it is noise, not clipping.
        codec.decoder.decoder[-1].conv.weight.mul_(0.02)
    codec.save_pretrained(str(codec_dir), safe_serialization=True)
    _write_json(
        codec_dir / "preprocessor_config.json",
        {
            "feature_extractor_type": "EncodecFeatureExtractor",
            "feature_size": 1,
            "sampling_rate": 24000,
            "padding_side": "right",
            "padding_value": 0.0,
            "return_attention_mask": True,
            "chunk_length_s": None,
            "overlap": None,
        },
    )
    _make_world_readable(directory)
    return directory


def _make_world_readable(directory: Path) -> None:
    """Like a downloaded checkpoint: readable by any user, e.g. a container's unprivileged
    one (safetensors writes its files 0600)."""
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_demo_models(root: Path, seed: int = 0, size: str = "tiny", generation: dict | None = None) -> dict[str, Path]:
    """Write ``root/customvoice``, ``root/base`` and ``root/voicedesign``."""
    return {
        name: build_model(root / name, kind, seed + offset, size=size, generation=generation)
        for name, (kind, offset) in DEMO_FAMILIES.items()
    }
