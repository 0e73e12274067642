"""The forced aligner's cost per second of audio: what word timings add to a response.

Builds (once, into ``--model-dir``) a random-weight Qwen3-ForcedAligner of the published
0.6B configuration (``qwen-tts-api demo-models --size 0.6b`` writes the same), loads it the
way the server does (``engine/models/aligner.py``), and times one segment's alignment for a
few segment lengths: the audio as the server hands it over (24 kHz, resampled by the
package to 16 kHz) with about 2.5 words a second, as speech has. Random weights do the
same arithmetic as real ones: the aligner is one forward pass whatever it answers.
The syllable estimate (no aligner) is timed beside it.

    uv run python bench/aligner.py --model-dir /tmp/benchmodels
    python bench/aligner.py --model-dir /tmp/benchmodels --device cuda:0 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
from decode_chunks import timed  # noqa: E402 (sibling script)

from qwen_tts_api.audio.voiced import voiced_span
from qwen_tts_api.devtools.demo_aligner import build_aligner
from qwen_tts_api.engine.models.aligner import WordAligner
from qwen_tts_api.text.words import spread

WORDS_PER_SECOND = 2.5
SECONDS = (2.0, 5.0, 10.0, 20.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/benchmodels"))
    parser.add_argument("--size", choices=("0.6b", "tiny"), default="0.6b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    directory = args.model_dir / f"aligner-{args.size}"
    if not (directory / "config.json").is_file():
        print(f"building the {args.size} aligner into {directory}", flush=True)
        build_aligner(directory, seed=0, size=args.size)
    aligner = WordAligner.load(str(directory), args.device, args.dtype)
    sync = (lambda: torch.cuda.synchronize(args.device)) if args.device.startswith("cuda") else (lambda: None)
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"aligner {args.size} on {args.device} in {args.dtype}"
    )
    print(f"{'audio s':>8} {'words':>6} {'align ms':>9} {'per audio s':>12} {'estimate ms':>12}")
    rng = np.random.default_rng(0)
    for seconds in SECONDS:
        audio = (rng.standard_normal(int(seconds * 24000)) * 0.1).astype(np.float32)
        words = [f"word{i}" for i in range(max(1, round(seconds * WORDS_PER_SECOND)))]
        align = timed(lambda a=audio, w=words: aligner.align(a, w), args.repeat, sync)
        estimate = timed(lambda a=audio, w=words: spread(w, *(s / 24000 for s in voiced_span(a))), args.repeat, sync)
        print(f"{seconds:8.1f} {len(words):6d} {align * 1000:9.1f} {align / seconds:12.3f} {estimate * 1000:12.2f}")
    aligner.close()


if __name__ == "__main__":
    main()
