"""Which floating-point type the models run in (``QWEN_TTS_DTYPE``).

``auto`` picks bfloat16 on CUDA. On a CPU it picks bfloat16 only where the processor does
bfloat16 arithmetic natively (AVX512-BF16 or AMX) and a matrix product of the talker's
shape measures faster in it than in float32; elsewhere bfloat16 is emulated and slower,
so float32. float16 is obeyed with a warning: it is reported to give non-finite logits
in the code predictor.

The codec (speech tokenizer, ``QWEN_TTS_CODEC_DTYPE``) is another matter: its convolutions
are compute-bound. On a CPU without native bfloat16 they ran 46 times slower in bfloat16
than in float32 (a 0.6B-sized decoder, 5.8 s against 0.12 s per frame); on one with AMX
tiles they ran 5 to 13 times faster, on an AVX512-BF16 Zen 4 twice as fast (docs/BENCHMARKS.md).
So ``auto`` picks bfloat16 for it on a CPU only where the processor has native bfloat16 and
a codec-sized convolution measures at least 1.5 times as fast in it: a clear gain is asked
for, since it rounds the waveform's path more coarsely (as the package does on a GPU, where
the codec runs in the model's dtype). The bar sits well below the 2x a Zen 4 measures, so
that the choice does not flip from one start to the next with the measurement's noise.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
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


def _seconds_per_product(dtype, repeat: int = 20) -> float:
    import torch

    # One talker MLP projection (1024 -> 3072) for one row: what a step mostly is on a CPU.
    weight = torch.randn(3072, 1024).to(dtype)
    x = torch.randn(1, 1024).to(dtype)
    with torch.inference_mode():
        for _ in range(3):
            torch.nn.functional.linear(x, weight)
        started = time.perf_counter()
        for _ in range(repeat):
            torch.nn.functional.linear(x, weight)
    return (time.perf_counter() - started) / repeat


def resolve_dtype(requested: str, device: str, flags: set[str] | None = None) -> str:
    """The dtype name to load with, logging why when it was chosen for the user."""
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
    import torch

    bf16, fp32 = _seconds_per_product(torch.bfloat16), _seconds_per_product(torch.float32)
    chosen = "bfloat16" if bf16 < fp32 else "float32"
    log.info(
        "QWEN_TTS_DTYPE=auto: %s (CPU has %s; a talker-sized product takes %.0f us in bfloat16, %.0f us in float32)",
        chosen,
        ", ".join(native),
        bf16 * 1e6,
        fp32 * 1e6,
    )
    return chosen


def _seconds_per_convolution(dtype, repeat: int = 3) -> float:
    import torch

    # A kernel-7 convolution of the codec's last block (96 channels, 16384 positions: under a
    # 16-frame tile), laid out as the decoder runs it on a CPU (a one-row image, channels-last).
    # The best of a few runs: start-up is a noisy moment to measure.
    weight = torch.randn(96, 96, 1, 7).to(dtype).contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 96, 1, 16384 + 6).to(dtype).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.inference_mode():
        torch.nn.functional.conv2d(x, weight)
        for _ in range(repeat):
            started = time.perf_counter()
            torch.nn.functional.conv2d(x, weight)
            best = min(best, time.perf_counter() - started)
    return best


def codec_dtype_for(requested: str, device: str, model_dtype: str, flags: set[str] | None = None) -> str:
    """The dtype the codec runs in (see above), logging why when it was chosen for the user."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return model_dtype
    if not set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags):
        return "float32"
    import torch

    bf16, fp32 = _seconds_per_convolution(torch.bfloat16), _seconds_per_convolution(torch.float32)
    chosen = "bfloat16" if CODEC_BF16_GAIN * bf16 <= fp32 else "float32"
    log.info(
        "QWEN_TTS_CODEC_DTYPE=auto: %s (a codec convolution takes %.1f ms in bfloat16, %.1f ms in float32)",
        chosen,
        bf16 * 1e3,
        fp32 * 1e3,
    )
    return chosen
