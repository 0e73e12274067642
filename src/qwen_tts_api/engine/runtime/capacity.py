"""How many requests a batch may hold (``QWEN_TTS_MAX_BATCH=auto``).

On a CPU the answer is today's 8: there the arithmetic, not memory, limits a batch (more
rows make each stream slower than real time; docs/BENCHMARKS.md). On a GPU it is what the
free memory after loading holds: each row reserves its talker's keys and values for the
longest request (prompt and ``max_new_tokens`` frames), the code predictor's for one frame
and the codec's window of one stream, counted from the models' own configurations and
dtypes; models on one device share it. At most ``AUTO_LIMIT`` rows, where the steps'
graphs have buckets (``compiled.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from ...constants import ModelKind
from ..models.loading import LoadedModel

log = logging.getLogger(__name__)

AUTO_LIMIT = 64  # rows a batch holds at most with auto
CPU_BATCH = 8  # rows on a CPU with auto (as before auto existed)
PROMPT_POSITIONS = 512  # a long prompt's positions (text, speaker, a clone reference) beside its frames
MEMORY_SHARE = 0.8  # of the free memory, what rows may take (the rest: activations, the allocator's slack)


def _kv_bytes(config, positions: int, itemsize: int) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * positions * itemsize


def row_bytes(model: LoadedModel) -> int:
    """Device memory one row of ``model``'s batch takes at most."""
    talker = model.tts.model.talker
    itemsize = next(talker.parameters()).element_size()
    frames = PROMPT_POSITIONS + model.max_new_tokens
    talker_cache = _kv_bytes(talker.config, frames, itemsize)
    predictor = talker.code_predictor.config
    predictor_cache = _kv_bytes(predictor, predictor.num_code_groups + 1, itemsize)
    codec = model.tts.model.speech_tokenizer.model.decoder
    window = _kv_bytes(codec.config, codec.config.sliding_window, next(codec.parameters()).element_size())
    return talker_cache + predictor_cache + window


def batch_size(setting: int | str, models: Mapping[ModelKind, LoadedModel]) -> int:
    """``QWEN_TTS_MAX_BATCH``: a number as it is; auto as above (per model)."""
    if setting != "auto":
        return int(setting)
    devices = {model.tts.model.talker.device for model in models.values()}
    cuda = [device for device in devices if device.type == "cuda"]
    if not cuda:
        log.info("batches of %d requests per model (QWEN_TTS_MAX_BATCH=auto on a CPU)", CPU_BATCH)
        return CPU_BATCH
    rows = AUTO_LIMIT
    for device in cuda:
        free, _ = torch.cuda.mem_get_info(device)
        on_device = [model for model in models.values() if model.tts.model.talker.device == device]
        needed = sum(row_bytes(model) for model in on_device)  # one row in each model's batch
        rows = min(rows, int(free * MEMORY_SHARE // needed))
        log.info(
            "%s: %.1f GiB free after loading, %.0f MiB per row of %s: batches of %d",
            device,
            free / 2**30,
            needed / 2**20,
            " and ".join(model.name for model in on_device),
            max(1, min(rows, AUTO_LIMIT)),
        )
    return max(1, min(rows, AUTO_LIMIT))
