"""Hours of load in minutes: does anything grow while the batch never empties?

Overlapping streaming clients keep our server (its own process) busy for --minutes: each
client sends one streaming pcm request after another, texts of different lengths so rows
join and leave the batch at different steps, and the clients start staggered so the batch
is never empty. Every --interval seconds it prints one line from the server's /metrics
and the clients' own clocks:

  rss MB        the server's resident memory (process_resident_memory_bytes)
  cache         talker KV-cache positions per row after the last step (a leak grows it)
  rows          mean batch size over the window
  step ms       mean time of one batched step over the window
  p50/p95 TTFA  time to first audio of the requests that finished in the window
  audio s/s     audio seconds streamed per wall second

and at the end the trend: each figure in the last third of the run against the first
third, and RSS growth per minute by least squares. A flat run stays within noise.

    uv run python bench/soak.py --model demo --minutes 20
    uv run python bench/soak.py --model 0.6b --minutes 6 --clients 3 --frames 40
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
from latency import ATTN, add_model_arguments, build, cpu_model, run_server, save_json, server_process  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families

# Different lengths: frame budgets of about 30 to 80 frames (capped by --frames).
TEXTS = [
    "Hi there.",
    "The soak test keeps talking.",
    "Rows join and leave the batch at different steps, all the time.",
    "A longer line of text keeps its row alive for many more frames than the short ones do here.",
]


class Tally:
    """What the clients saw, in the current window (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ttfa: list[float] = []
        self.audio = 0.0
        self.failures = 0

    def take(self) -> tuple[list[float], float, int]:
        with self.lock:
            out = (self.ttfa, self.audio, self.failures)
            self.ttfa, self.audio, self.failures = [], 0.0, 0
            return out


def client(url: str, number: int, tally: Tally, stop: threading.Event, delay: float) -> None:
    time.sleep(delay)
    texts = itertools.cycle(TEXTS[number % len(TEXTS) :] + TEXTS[: number % len(TEXTS)])
    while not stop.is_set():
        try:
            result = run_server(url, True, next(texts))
        except httpx.HTTPError:
            with tally.lock:
                tally.failures += 1
            continue
        with tally.lock:
            tally.ttfa.append(result["ttfa"])
            tally.audio += result["audio"]


def scrape(http: httpx.Client) -> dict[str, float]:
    """Sums of the server's metric samples by name (every model together)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def slope_per_minute(times: list[float], values: list[float]) -> float:
    if len(times) < 2:
        return 0.0
    mt, mv = statistics.fmean(times), statistics.fmean(values)
    return sum((t - mt) * (v - mv) for t, v in zip(times, values)) / sum((t - mt) ** 2 for t in times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.set_defaults(frames=80)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=30, help="seconds per sample")
    parser.add_argument("--json", type=Path, help="also write the samples here")
    args = parser.parse_args()
    directory = args.model_dir or Path(__import__("tempfile").mkdtemp(prefix="qwen-tts-soak-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = build(args.model, args.frames, directory)

    samples: list[dict] = []
    tally, stop = Tally(), threading.Event()
    variant = (args.servers or ["auto"])[0]
    with server_process(path, args.device, variant, ATTN) as url, httpx.Client(base_url=url, timeout=30) as http:
        # Staggered starts, a fraction of one request's time apart: the batch never empties.
        workers = [
            threading.Thread(target=client, args=(url, i, tally, stop, i * 1.5), daemon=True)
            for i in range(args.clients)
        ]
        for worker in workers:
            worker.start()
        began = time.monotonic()
        before = scrape(http)
        tally.take()
        print(
            f"{'min':>5}{'rss MB':>9}{'cache':>7}{'rows':>6}{'step ms':>9}{'p50 TTFA':>10}{'p95 TTFA':>10}"
            f"{'audio s/s':>11}{'fail':>6}",
            flush=True,
        )
        while time.monotonic() - began < args.minutes * 60:
            window_start = time.monotonic()
            time.sleep(args.interval)
            now = scrape(http)
            ttfa, audio, failures = tally.take()
            wall = time.monotonic() - window_start

            delta = {name: value - before.get(name, 0.0) for name, value in now.items()}
            steps = delta.get("qwen_tts_step_seconds_count", 0.0)
            sample = {
                "minute": (time.monotonic() - began) / 60,
                "rss_mb": now.get("process_resident_memory_bytes", 0.0) / 2**20,
                "cache_positions": now.get("qwen_tts_batch_cache_positions", 0.0),
                "rows": delta.get("qwen_tts_batch_size_sum", 0.0) / steps if steps else 0.0,
                "step_ms": 1000 * delta.get("qwen_tts_step_seconds_sum", 0.0) / steps if steps else 0.0,
                "p50_ttfa": percentile(ttfa, 0.5),
                "p95_ttfa": percentile(ttfa, 0.95),
                "throughput": audio / wall,
                "failures": failures,
                "requests": len(ttfa),
            }
            before = now
            samples.append(sample)
            print(
                f"{sample['minute']:>5.1f}{sample['rss_mb']:>9.0f}{sample['cache_positions']:>7.0f}"
                f"{sample['rows']:>6.2f}{sample['step_ms']:>9.1f}{sample['p50_ttfa']:>10.3f}"
                f"{sample['p95_ttfa']:>10.3f}{sample['throughput']:>11.3f}{failures:>6}",
                flush=True,
            )
        stop.set()
        for worker in workers:
            worker.join(timeout=600)

    steady = samples[1:] or samples  # the first window is the clients' staggered start
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]
    print(
        f"\nmodel={args.model} clients={args.clients} minutes={args.minutes:g} device={args.device} "
        f"server={variant} cpu={cpu_model()}"
    )
    print(f"{'figure':<12}{'first third':>13}{'last third':>12}{'change':>9}")
    for key in ("rss_mb", "cache_positions", "step_ms", "p50_ttfa", "p95_ttfa", "throughput"):
        a = statistics.fmean(s[key] for s in first)
        b = statistics.fmean(s[key] for s in last)
        print(f"{key:<12}{a:>13.3f}{b:>12.3f}{(b - a) / a * 100 if a else 0.0:>8.1f}%")
    growth = slope_per_minute([s["minute"] for s in steady], [s["rss_mb"] for s in steady])
    print(
        f"rss growth by least squares: {growth:+.2f} MB/min; "
        f"requests {sum(s['requests'] for s in samples)}, failures {sum(s['failures'] for s in samples)}"
    )
    if args.json:
        save_json(args, samples=samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
