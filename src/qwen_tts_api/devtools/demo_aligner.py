"""A random-weight Qwen3-ForcedAligner checkpoint with the published file layout.

It loads through ``qwen_asr.Qwen3ForcedAligner.from_pretrained`` like the real aligner, so
the server's word timings run every line they run with real weights; its times are
arbitrary (still in order: the package repairs any that are not). ``size="tiny"`` builds in
a second; ``"0.6b"`` writes the published configuration (``published/``) with random
weights, for measuring the aligner's cost at real scale.

The published configuration is quoted from public ports of the aligner (its token ids,
80 ms timestamp classes and widths agree across them); ``rope_scaling`` is the package's
own default for the text model.
"""

from __future__ import annotations

import json
from pathlib import Path

from .demo_models import PUBLISHED, _make_world_readable, _reinitialise, _write_json, build_text_tokenizer

# The aligner's prompt: audio between its markers, then each word followed by two timestamp slots.
ALIGNER_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
    "<timestamp>",
]
ALIGNER_NAMED = {
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}
# Where the published vocabulary keeps them.
PUBLISHED_ALIGNER_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|audio_start|>": 151669,
    "<|audio_end|>": 151670,
    "<|audio_pad|>": 151676,
    "<timestamp>": 151705,
}
ALIGNER_SIZES = ("tiny", "0.6b")


def published_aligner_config() -> dict:
    return json.loads((PUBLISHED / "forced-aligner-0.6b.config.json").read_text(encoding="utf-8"))


def _tiny_config(token_id: dict[str, int]) -> dict:
    config = published_aligner_config()
    thinker = config["thinker_config"]
    config["timestamp_token_id"] = token_id["<timestamp>"]
    thinker["audio_token_id"] = token_id["<|audio_pad|>"]
    thinker["audio_start_token_id"] = token_id["<|audio_start|>"]
    thinker["audio_end_token_id"] = token_id["<|audio_end|>"]
    thinker["classify_num"] = 500  # 40 s of 80 ms classes: longer than any test's segment
    thinker["audio_config"].update(
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        d_model=32,
        output_dim=32,
        downsample_hidden_size=8,
    )
    thinker["text_config"].update(
        vocab_size=max(token_id.values()) + 1,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        rope_scaling={"rope_type": "default", "mrope_section": [4, 2, 2], "interleaved": True},
    )
    return config


def build_aligner(directory: Path, seed: int = 0, size: str = "tiny") -> Path:
    """Write the aligner checkpoint of ``size`` (one of ``ALIGNER_SIZES``) into ``directory``."""
    import torch
    from qwen_asr.core.transformers_backend import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    if size not in ALIGNER_SIZES:
        raise ValueError(f"unknown aligner size {size!r} (one of {', '.join(ALIGNER_SIZES)})")
    directory.mkdir(parents=True, exist_ok=True)
    special_ids = None if size == "tiny" else PUBLISHED_ALIGNER_IDS
    token_id = build_text_tokenizer(directory, special_ids, specials=ALIGNER_SPECIALS, named_specials=ALIGNER_NAMED)
    config_dict = _tiny_config(token_id) if size == "tiny" else published_aligner_config()
    torch.manual_seed(seed)
    model = Qwen3ASRForConditionalGeneration(Qwen3ASRConfig(**config_dict))
    _reinitialise(model, seed)
    if size != "tiny":
        model.to(torch.bfloat16)
    model.save_pretrained(str(directory), safe_serialization=True)
    _write_json(directory / "config.json", config_dict)
    _write_json(
        directory / "preprocessor_config.json",
        {
            "feature_extractor_type": "WhisperFeatureExtractor",
            "processor_class": "Qwen3ASRProcessor",
            "feature_size": 128,
            "sampling_rate": 16000,
            "hop_length": 160,
            "chunk_length": 30,
            "n_fft": 400,
            "padding_side": "right",
            "padding_value": 0.0,
            "return_attention_mask": True,
        },
    )
    _make_world_readable(directory)
    return directory
