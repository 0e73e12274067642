"""Time to first audio against the size of the first chunk, on one server.

First audio waits for the prompt's prefill, one step per frame of the first chunk, and
that chunk's decode. This sends streaming requests with ``initial_codec_chunk_frames`` set
to each size in turn (interleaved, so machine noise hits them alike), reads until the first
audio bytes, and closes the stream (the server cancels the rest):

    uv run python bench/first_audio.py --model 0.6b --model-dir /tmp/benchmodels --server float32+int8
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
from latency import ATTN, add_model_arguments, model_path, server_process, speech_body  # noqa: E402 (sibling script)


def first_audio(url: str, first_frames: int) -> float:
    body = {**speech_body(stream=True), "initial_codec_chunk_frames": first_frames}
    with httpx.Client(timeout=600) as http:
        started = time.perf_counter()
        with http.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                if chunk:
                    return time.perf_counter() - started
    raise RuntimeError("the stream ended without audio")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, default_model="0.6b")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3], help="first-chunk frames to compare")
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    variant = (args.servers or ["auto"])[0]
    times: dict[int, list[float]] = {size: [] for size in args.sizes}
    with server_process(model_path(args), args.device, variant, ATTN) as url:
        for size in args.sizes:  # warm-up, not counted
            first_audio(url, size)
        for _ in range(args.runs):
            for size in args.sizes:
                times[size].append(first_audio(url, size))
                time.sleep(1)  # the cancelled request's step ends before the next one's prefill
    print(f"\nmodel={args.model} server={variant} runs={args.runs}")
    print(f"{'first chunk':<14}{'median s':>10}{'best s':>10}")
    for size, runs in times.items():
        print(f"{f'{size} frames':<14}{statistics.median(runs):>10.3f}{min(runs):>10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
