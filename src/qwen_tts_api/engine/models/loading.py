"""Loads Qwen3-TTS checkpoints through the official ``qwen_tts`` package."""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...constants import ModelKind, display_speaker_name
from ...settings import Settings
from ...text.control_tokens import control_tokens_of
from .compact import (
    MappedFiles,
    StoredWeights,
    codec_deferred,
    drop_codec_encoder,
    map_embeddings,
    release_freed_memory,
    return_large_blocks,
    widen,
)
from .openmp import release_worker_threads
from .precision import codec_dtype_for, resolve_dtype
from .quantize import QUANTIZE_MODES, dynamic_kernel_available, quantize_int8
from .source import ModelSource, resolve_sources

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded with the configured device, dtype or attention."""


@dataclass
class LoadedModel:
    kind: ModelKind
    name: str  # directory name, e.g. Qwen3-TTS-12Hz-0.6B-CustomVoice
    path: Path
    tts: Any  # qwen_tts.Qwen3TTSModel
    speakers: list[str]  # display names, e.g. "Uncle_Fu"
    languages: list[str]  # lower-case names the model accepts, including "auto"
    size_tag: str  # "0b6" or "1b7"
    max_new_tokens: int
    created: int = field(default_factory=lambda: int(time.time()))
    control_tokens: list[str] = field(default_factory=list)  # removed from user text (text/control_tokens.py)

    @property
    def speaker_embedding_width(self) -> int:
        """The x-vector's width: it takes the place of a speaker's row in the talker's input."""
        return int(self.tts.model.talker.config.hidden_size)

    @property
    def supports_instructions(self) -> bool:
        # Mirrors qwen_tts: the 0.6B checkpoints drop `instruct` before generation.
        return self.size_tag != "0b6"


def resolve_attention(requested: str | None, device: str) -> str | None:
    """Fall back from flash attention when it cannot run, instead of failing to start."""
    if requested != "flash_attention_2":
        return requested
    if not device.startswith("cuda"):
        log.warning("QWEN_TTS_ATTN=flash_attention_2 needs a CUDA device; using sdpa on %s", device)
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is None:
        log.warning("flash-attn is not installed; using sdpa attention (see README to install it)")
        return "sdpa"
    try:
        importlib.import_module("flash_attn")
    except Exception as exc:  # noqa: BLE001 - e.g. built against another torch: undefined symbols
        log.warning(
            "flash-attn is installed but cannot be imported (%s: %s); using sdpa attention. "
            "It must be built for this torch (%s)",
            type(exc).__name__,
            exc,
            _torch_version(),
        )
        return "sdpa"
    return requested


def _torch_version() -> str:
    import torch

    return f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}"


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"QWEN_TTS_DEVICE={device} but torch cannot use a CUDA device: {cuda_diagnosis()}; "
            "or set QWEN_TTS_DEVICE=cpu (and QWEN_TTS_DTYPE=float32) to run on the CPU"
        )


def cuda_diagnosis() -> str:
    """Why ``torch.cuda.is_available()`` is False, as far as can be told without a driver call
    that might crash: no CUDA build, no driver at all, or a driver older than the build."""
    import torch

    built_for = torch.version.cuda
    if not built_for:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    driver = _nvidia_driver_version()
    if driver is None:
        return (
            f"no NVIDIA driver was found (this torch {torch.__version__} is built for CUDA {built_for}); "
            "in a container, run it with the GPU passed through (docker run --gpus all)"
        )
    return (
        f"the NVIDIA driver is {driver} and this torch ({torch.__version__}) is built for CUDA {built_for}; "
        f"the likely cause is a driver older than that CUDA version needs (see README: GPU driver), "
        "so update the driver or install a torch built for an older CUDA"
    )


def _nvidia_driver_version() -> str | None:
    try:
        first_line = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    found = re.search(r"\s(\d{3,}\.\d+(?:\.\d+)?)\s", first_line)  # "... Kernel Module  535.129.03  Thu ..."
    return found.group(1) if found else "of an unknown version"


def resolve_device(device: str) -> str:
    """``QWEN_TTS_DEVICE``: ``auto`` is the first CUDA device when torch can use one, else the CPU."""
    if device.strip().lower() != "auto":
        return device
    import torch

    chosen = "cuda:0" if torch.cuda.is_available() else "cpu"
    log.info("QWEN_TTS_DEVICE=auto: %s%s", chosen, "" if chosen != "cpu" else " (torch sees no CUDA device)")
    return chosen


# QWEN_TTS_PROFILE=fast on a CPU: what it sets, unless set by hand.
FAST_CPU_SETUP = {"quantize": "int8", "compile": "on"}


def with_profile(settings: Settings) -> Settings:
    """``settings`` with the device resolved and ``QWEN_TTS_PROFILE``'s choices made for what
    was not set by hand; logs which CPU setup runs and how to get the other."""
    settings = settings.model_copy(update={"device": resolve_device(settings.device)})
    if settings.device != "cpu":
        return settings
    if settings.profile == "fast":
        chosen = {name: value for name, value in FAST_CPU_SETUP.items() if name not in settings.model_fields_set}
        settings = settings.model_copy(update=chosen)
    fast = settings.quantize == "int8" and settings.compile == "on"
    log.info(
        "CPU setup: %s weights, %s step%s",
        "int8" if settings.quantize != "none" else "float",
        "compiled" if settings.compile == "on" else "eager",
        "" if fast else "; QWEN_TTS_PROFILE=fast runs int8 weights and the compiled step (see README, CPU speed)",
    )
    return settings


def load_model(
    kind: ModelKind,
    path: Path,
    settings: Settings,
    dtype: str | None = None,
    name: str | None = None,
    codec_dtype: str | None = None,
) -> LoadedModel:
    """Load one model; ``dtype`` and ``codec_dtype`` are the resolved ``QWEN_TTS_DTYPE`` and
    ``QWEN_TTS_CODEC_DTYPE`` (resolved here if not given), ``name`` what /v1/models calls it
    (the directory's name if not given)."""
    import torch
    from qwen_tts import Qwen3TTSModel

    _check_device(settings.device)
    dtype = dtype or resolve_dtype(settings.dtype, settings.device, quantize=settings.quantize)
    codec_dtype = codec_dtype or codec_dtype_for(settings.codec_dtype, settings.device, dtype)
    # On a CPU, a talker stored in bfloat16 loads as stored and is quantised or widened after
    # (compact.py): the same numbers without a float32 copy of the whole checkpoint.
    stored = StoredWeights.of(path) if settings.device == "cpu" and dtype in ("float32", "bfloat16") else None
    compact = stored is not None and stored.bfloat16
    kwargs: dict[str, Any] = {
        "device_map": settings.device,
        "dtype": torch.bfloat16 if compact else getattr(torch, dtype),
    }
    attn = resolve_attention(settings.attn_implementation, settings.device)
    if attn:
        kwargs["attn_implementation"] = attn
    started = time.perf_counter()
    try:
        with codec_deferred() as codec:
            if codec is None:
                compact, kwargs["dtype"] = False, getattr(torch, dtype)
            tts = Qwen3TTSModel.from_pretrained(str(path), **kwargs)
        model = tts.model
        _shrink_talker(kind, model, settings, dtype, stored if compact else None)
        if codec is not None:
            codec.load(model, getattr(torch, dtype))  # in the model's dtype, as the package loads it
    except Exception as exc:  # transformers raises many types; report one clear error
        raise ModelLoadError(f"could not load {kind} model from {path}: {exc}") from exc
    if codec_dtype != dtype:
        model.speech_tokenizer.model.to(getattr(torch, codec_dtype))
        log.info("%s: the codec runs in %s, the talker and code predictor in %s", kind, codec_dtype, dtype)
    if kind != ModelKind.BASE and settings.device == "cpu" and drop_codec_encoder(model):
        log.debug("%s: the codec's encoder is dropped (only cloning uses it)", kind)
    release_freed_memory()
    speakers = [display_speaker_name(s) for s in (model.get_supported_speakers() or [])]
    languages = [str(lang).lower() for lang in (model.get_supported_languages() or ["auto"])]
    max_new = int((model.generate_config or {}).get("max_new_tokens", 2048))
    log.info("loaded %s model %s in %.1fs", kind, path.name, time.perf_counter() - started)
    return LoadedModel(
        kind=kind,
        name=name or path.resolve().name,
        path=path,
        tts=tts,
        speakers=speakers if kind == ModelKind.CUSTOMVOICE else [],
        languages=languages,
        size_tag=str(model.tts_model_size or ""),
        max_new_tokens=max_new,
        control_tokens=control_tokens_of(tts),
    )


def _shrink_talker(kind: ModelKind, model: Any, settings: Settings, dtype: str, stored: StoredWeights | None) -> None:
    """Quantise the talker's linears (``QWEN_TTS_QUANTIZE``); a talker ``stored`` in bfloat16
    and loaded so is then widened to ``dtype``, its text embedding mapped from the file."""
    import torch

    release = MappedFiles().release if stored is not None else None  # the checkpoint's pages, once used
    if settings.quantize != "none":
        kernel = QUANTIZE_MODES[settings.quantize]
        if kernel == "dynamic" and not (settings.device == "cpu" and dynamic_kernel_available()):
            log.warning("QWEN_TTS_QUANTIZE=int8 runs fbgemm on a CPU; on %s: int8-weight-only", settings.device)
            kernel = "weight-only"
        replaced = quantize_int8(model.talker, kernel, release)
        log.info("%s: %d talker and code-predictor linears quantised to int8 (%s)", kind, replaced, kernel)
    if stored is not None:
        mapped = map_embeddings(model.talker, stored, getattr(torch, dtype), release)
        widen(model, getattr(torch, dtype), release)
        log.info(
            "%s: loaded as stored (bfloat16), %s in %s%s",
            kind,
            "the linears in int8, the rest" if settings.quantize != "none" else "run",
            dtype,
            f"; {mapped} embedding tables are read from the file as used" if mapped else "",
        )
    release_freed_memory()


def load_models(
    settings: Settings, sources: dict[ModelKind, ModelSource] | None = None
) -> dict[ModelKind, LoadedModel]:
    """Every configured model (``sources``: already resolved, else resolved here)."""
    settings = settings.model_copy(update={"device": resolve_device(settings.device)})
    _check_device(settings.device)
    if settings.device == "cpu":
        return_large_blocks()
    dtype = resolve_dtype(settings.dtype, settings.device, quantize=settings.quantize)
    codec_dtype = codec_dtype_for(settings.codec_dtype, settings.device, dtype)
    if sources is None:
        sources = resolve_sources(settings.model_paths())
    models = {
        kind: load_model(kind, source.path, settings, dtype, name=source.name, codec_dtype=codec_dtype)
        for kind, source in sources.items()
    }
    release_worker_threads()  # this thread is done with PyTorch: its workers would slow the steps'
    return models
