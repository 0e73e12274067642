"""Which floating-point type the models run in (``QWEN_TTS_DTYPE``).

``auto`` picks bfloat16 on CUDA. On a CPU it picks bfloat16 only where the processor does
bfloat16 arithmetic natively (AVX512-BF16 or AMX) and a talker-sized matrix product measures
at least 1.25 times as fast in it as in float32; elsewhere bfloat16 is emulated and slower,
so float32. The product is measured as a step meets it, weights read from memory (a step
reads far more of them than any cache holds), best of a few rounds, so that the choice does
not flip from one start to the next with noise (and a seed's audio with it). With
``QWEN_TTS_QUANTIZE=int8`` the talker's products run in int8 whatever the dtype, and
``auto`` takes float32 on a CPU. float16 is obeyed with a warning: it is reported to give
non-finite logits in the code predictor.

The codec (speech tokenizer, ``QWEN_TTS_CODEC_DTYPE``) is another matter: its convolutions
are compute-bound, far slower in emulated bfloat16 and far faster in native bfloat16. So
``auto`` picks bfloat16 for it on a CPU only where the processor has native bfloat16 and a
codec-sized convolution measures at least 1.5 times as fast in it: a clear gain is asked
for, since it rounds the waveform's path more coarsely (as the package does on a GPU, where
the codec runs in the model's dtype), and the bar sits well below what such processors
measure, so the choice holds from one start to the next. The figures behind both bars are
in docs/BENCHMARKS.md ("`QWEN_TTS_DTYPE=auto` on a CPU", "The codec in bfloat16 where AMX is").
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
TALKER_BF16_GAIN = 1.25  # how many times faster a talker-sized product must be in bfloat16 for auto to take it
CODEC_BF16_GAIN = 1.5  # how many times faster a codec convolution must be in bfloat16 for auto to take it
FLOAT16_WARNING = (
    "QWEN_TTS_DTYPE=float16 is reported to give non-finite logits in the code predictor "
    "(those requests then fail with generation_failed); bfloat16 or float32 are safer"
)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _best_seconds(run: Callable[[], object], calls: int, rounds: int) -> float:
    """Seconds per call of ``run``: the best of ``rounds`` rounds of ``calls`` calls each, after
    one call to warm up. Start-up is a noisy moment to measure; the best round is the steadiest."""
    import torch

    best = float("inf")
    with torch.inference_mode():
        run()
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(calls):
                run()
            best = min(best, (time.perf_counter() - started) / calls)
    return best


def _measured_choice(seconds_in: Callable[[Any], float], gain: float) -> tuple[str, float, float]:
    """``(dtype, bfloat16 s, float32 s)``: bfloat16 where ``seconds_in`` measures it at least
    ``gain`` times as fast as float32, else float32."""
    import torch

    bf16, fp32 = seconds_in(torch.bfloat16), seconds_in(torch.float32)
    return ("bfloat16" if gain * bf16 <= fp32 else "float32"), bf16, fp32


def _seconds_per_product(dtype, matrices: int = 8) -> float:
    import torch

    # One talker MLP projection (1024 -> 3072) for one row, what a step mostly is on a CPU,
    # taking turns over several weights (100 MB in float32) so that each is read from memory.
    weights = torch.empty(matrices, 3072, 1024).uniform_(-0.05, 0.05).to(dtype)
    x = torch.randn(1, 1024).to(dtype)
    turn = itertools.cycle(weights)
    return _best_seconds(lambda: torch.nn.functional.linear(x, next(turn)), calls=2 * matrices, rounds=5)


def resolve_dtype(requested: str, device: str, flags: set[str] | None = None, quantize: str = "none") -> str:
    """The dtype name to load with, logging why when it was chosen for the user. ``quantize``:
    ``QWEN_TTS_QUANTIZE``."""
    if requested == "float16":
        log.warning(FLOAT16_WARNING)
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        log.info("QWEN_TTS_DTYPE=auto: bfloat16 on %s", device)
        return "bfloat16"
    native = sorted(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
    if not native:
        missing = " or ".join(NATIVE_BF16_FLAGS)
        log.info("QWEN_TTS_DTYPE=auto: float32 (this CPU has no native bfloat16: no %s)", missing)
        return "float32"
    if quantize == "int8":
        # The products bfloat16 would speed up run in int8 (on float32 rows); what is left
        # around them ran faster in float32 (docs/BENCHMARKS.md).
        log.info("QWEN_TTS_DTYPE=auto: float32 (QWEN_TTS_QUANTIZE=int8 runs the talker's products in int8)")
        return "float32"
    chosen, bf16, fp32 = _measured_choice(_seconds_per_product, TALKER_BF16_GAIN)
    log.info(
        "QWEN_TTS_DTYPE=auto: %s (CPU has %s; a talker-sized product takes %.0f us in bfloat16, %.0f us in float32)",
        chosen,
        ", ".join(native),
        bf16 * 1e6,
        fp32 * 1e6,
    )
    return chosen


def _seconds_per_convolution(dtype) -> float:
    import torch

    # A kernel-7 convolution of the codec's last block (96 channels, 16384 positions: under a
    # 16-frame tile), laid out as the decoder runs it on a CPU (a one-row image, channels-last).
    weight = torch.randn(96, 96, 1, 7).to(dtype).contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 96, 1, 16384 + 6).to(dtype).contiguous(memory_format=torch.channels_last)
    return _best_seconds(lambda: torch.nn.functional.conv2d(x, weight), calls=1, rounds=3)


def codec_dtype_for(requested: str, device: str, model_dtype: str, flags: set[str] | None = None) -> str:
    """The dtype the codec runs in (see above), logging why when it was chosen for the user."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return model_dtype
    if not set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags):
        return "float32"
    chosen, bf16, fp32 = _measured_choice(_seconds_per_convolution, CODEC_BF16_GAIN)
    log.info(
        "QWEN_TTS_CODEC_DTYPE=auto: %s (a codec convolution takes %.1f ms in bfloat16, %.1f ms in float32)",
        chosen,
        bf16 * 1e3,
        fp32 * 1e3,
    )
    return chosen
