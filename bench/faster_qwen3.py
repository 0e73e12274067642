"""faster-qwen3-tts on the same benchmark model, for bench/gpu_check.sh's side-by-side table.

Runs in its own virtual environment (faster-qwen3-tts needs transformers 5, the package
qwen-tts pins 4.x), so it imports nothing of ours: only faster_qwen3_tts, torch and numpy.
Prints one JSON line: time to first audio (streaming, chunk_size 8, as its README measures)
and real-time factor for a fixed number of frames (random weights never end on their own).

    /tmp/fq/bin/python bench/faster_qwen3.py --model-dir /tmp/gpu-models/0.6b-customvoice --frames 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from faster_qwen3_tts import FasterQwen3TTS

TEXT = "Ladies and gentlemen, this speech is being generated faster than I can speak it, or so we hope."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    model = FasterQwen3TTS.from_pretrained(
        args.model_dir, device=args.device, dtype=torch.bfloat16, attn_implementation="eager", max_seq_len=2048
    )
    speaker = (model.model.get_supported_speakers() or ["vivian"])[0]
    common = {"text": TEXT, "speaker": speaker, "language": "English", "max_new_tokens": args.frames}
    model.generate_custom_voice(**{**common, "max_new_tokens": 20})  # warm-up: graph capture

    ttfa, rtf = [], []
    for _ in range(args.runs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        stream = model.generate_custom_voice_streaming(**common, chunk_size=8)
        next(stream)
        torch.cuda.synchronize()
        ttfa.append(time.perf_counter() - started)
        stream.close()
        started = time.perf_counter()
        audio, rate = model.generate_custom_voice(**common)
        torch.cuda.synchronize()
        rtf.append((len(audio[0]) / rate) / (time.perf_counter() - started))
    figures = {"engine": "faster-qwen3-tts", "ttfa_s": statistics.median(ttfa), "x_realtime": statistics.median(rtf)}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
