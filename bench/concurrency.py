"""Throughput and time to first audio under concurrent load, against the serial baseline.

  serial     the official qwen_tts package, one request at a time (the specification's
             design: a lock around generate_custom_voice), N requests back to back
  server@C   our server (its own process, continuous batching), C clients at once, each
             streaming one request; C in --concurrency. With several --server variants, each
             in turn (one server process at a time), its rows named after it

Every request makes exactly --frames frames (random weights never end early). Throughput is
audio seconds per wall second; a stream's speed is its own audio seconds per second from
its request to its last byte (the slowest stream's and the median are printed); TTFA
percentiles are over the C requests of a level (for serial: time until each request's audio
is complete, counting its wait in the queue); at concurrency 1, --lone-requests requests one
after another, whose median TTFA is what p95/single divides by. The server batches at most
--max-batch rows (QWEN_TTS_MAX_BATCH).

    uv run python bench/concurrency.py --model demo --serial-requests 0 --max-batch 64 --decode-together on
    uv run python bench/concurrency.py --model 0.6b --frames 50 --concurrency 1 4 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from latency import (  # noqa: E402 (sibling script)
    ATTN,
    SAMPLE_RATE,
    TEXT,
    add_model_arguments,
    cpu_model,
    load_official,
    model_path,
    run_server,
    save_json,
    server_process,
    text_tokens,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def serial(tts, frames: int, count: int) -> dict:
    started = time.perf_counter()
    done_at, audio = [], 0.0
    for _ in range(count):
        wavs, _ = tts.generate_custom_voice(TEXT, speaker="Vivian", language="English", max_new_tokens=frames + 1)
        done_at.append(time.perf_counter() - started)
        audio += len(wavs[0]) / SAMPLE_RATE
    wall = time.perf_counter() - started
    return {"throughput": audio / wall, "ttfa": done_at, "wall": wall}


def concurrent(url: str, count: int, rounds: int = 1) -> dict:
    """``count`` clients at once, ``rounds`` times in a row (their TTFAs pooled)."""
    started = time.perf_counter()
    results = []
    with ThreadPoolExecutor(count) as pool:
        for _ in range(rounds):
            results += list(pool.map(lambda _: run_server(url, True), range(count)))
    wall = time.perf_counter() - started
    return {
        "throughput": sum(r["audio"] for r in results) / wall,
        "ttfa": [r["ttfa"] for r in results],
        "speed": [r["audio"] / r["total"] for r in results],  # each stream's x real time
        "wall": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--max-batch", default="16", help="the server's QWEN_TTS_MAX_BATCH (a number or auto)")
    parser.add_argument(
        "--decode-together",
        choices=["auto", "on", "off"],
        default="auto",
        help="the server's QWEN_TTS_DECODE_TOGETHER (on: as a GPU's auto, for the demo-model proxy)",
    )
    parser.add_argument(
        "--serial-requests", type=int, default=4, help="requests in the serial baseline (0: our server alone)"
    )
    parser.add_argument(
        "--lone-requests", type=int, default=5, help="requests one after another at concurrency 1 (median TTFA)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = args.servers or ["auto"]
    base: dict | None = None
    rows: list[tuple[str, dict]] = []
    if args.serial_requests:
        path, official = load_official(args)
        serial(official, args.frames, 1)  # warm-up
        base = serial(official, args.frames, args.serial_requests)
        rows.append(("serial", base))
        del official
    else:  # on a GPU the package's serial requests take longer than all the rest
        path = model_path(args)
    singles: dict[str, float] = {}  # per variant: a lone request's median TTFA
    for variant in variants:
        queue = max(64, max(args.concurrency))
        extra = {
            "QWEN_TTS_MAX_BATCH": str(args.max_batch),
            "QWEN_TTS_MAX_QUEUE": str(queue),
            "QWEN_TTS_DECODE_TOGETHER": args.decode_together,
        }
        with server_process(path, args.device, variant, ATTN, extra_env=extra) as url:
            run_server(url, True)
            for level in args.concurrency:
                rounds = args.lone_requests if level == 1 else 1  # one request's TTFA is noisy
                rows.append((f"{variant}@{level}", concurrent(url, level, rounds)))
                done = rows[-1][1]  # each level's line as it ends (a run cut short still reports)
                print(
                    f"{rows[-1][0]}: {done['throughput']:.2f} audio-s/s, p95 first audio "
                    f"{percentile(done['ttfa'], 0.95):.3f} s, slowest stream {min(done['speed']):.2f}x real time",
                    flush=True,
                )
                if level == 1:
                    singles[variant] = statistics.median(rows[-1][1]["ttfa"])

    print(
        f"\nmodel={args.model} frames={args.frames} device={args.device} package dtype={args.dtype} "
        f"servers={','.join(variants)} text_tokens={text_tokens(path)} torch_threads={torch.get_num_threads()} "
        f"cpu={cpu_model()} max_batch={args.max_batch} decode_together={args.decode_together}"
    )
    width = max(12, *(len(name) + 2 for name, _ in rows))  # rows: the servers' at least
    header = f"{'path':<{width}}{'audio s/s':>11}{'x serial':>10}{'p50 TTFA':>10}{'p95 TTFA':>10}{'p95/single':>12}"
    print(header + f"{'slowest x RT':>14}{'median x RT':>13}")
    out = []
    for name, r in rows:
        p50, p95 = percentile(r["ttfa"], 0.5), percentile(r["ttfa"], 0.95)
        single = singles.get(name.rpartition("@")[0])
        ratio = f"{p95 / single:>12.2f}" if single else f"{'':>12}"
        print(
            f"{name:<{width}}{r['throughput']:>11.3f}"
            + (f"{r['throughput'] / base['throughput']:>10.2f}" if base else f"{'':>10}")
            + f"{p50:>10.3f}{p95:>10.3f}"
            + ratio
            + (f"{min(r['speed']):>14.3f}{statistics.median(r['speed']):>13.3f}" if "speed" in r else "")
        )
        row = {"name": name, "throughput": r["throughput"], "p50_ttfa": p50, "p95_ttfa": p95, "wall": r["wall"]}
        if "speed" in r:
            row |= {"slowest_speed": min(r["speed"]), "median_speed": statistics.median(r["speed"])}
        out.append(row)
    if args.json:
        save_json(args, rows=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
