"""Memory, start-up and speed of each CPU setup, side by side with the package, in one run.

For each --server variant (bench/latency.py's: "float32", "auto+int8", "auto+int8+compile",
or "fast" for QWEN_TTS_PROFILE=fast), our server is started --starts times on one data
directory (the first start is a first start; later ones find what it kept: the start-up
probes' answers, compiled graphs) and measured:

  ready s      process start to /ready answering 200 (imports, loading, warm-up, compiling)
  first s      /ready to the end of the first request's audio (streamed, --frames frames)
  peak RSS     the server process's peak resident memory (VmHWM) after those requests
  ttfa, rtf    medians over --runs streamed requests after that: first audio, and wall
               time over audio time

The package (qwen_tts loaded in float32, generate_custom_voice) runs in its own process:
its load time, peak RSS and real-time factor over the same frames. ``--baseline DIR
VARIANT`` also measures another checkout's server (``DIR/src`` first on the path; e.g. a
worktree of an earlier commit) in that variant, for a before-and-after in one run.

    uv run python bench/startup.py --model 0.6b --server float32 --server auto+int8 --server fast
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from latency import FRAME_SECONDS, add_model_arguments, cpu_model, model_path, run_server, server_env

from qwen_tts_api.devtools import free_port

PACKAGE_SCRIPT = """
import json, resource, sys, time
started = time.perf_counter()
import torch
from qwen_tts import Qwen3TTSModel
tts = Qwen3TTSModel.from_pretrained(sys.argv[1], device_map="cpu", dtype=torch.float32, attn_implementation="sdpa")
loaded = time.perf_counter() - started
frames, runs, text = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rtfs = []
for _ in range(runs + 1):
    begun = time.perf_counter()
    wavs, rate = tts.generate_custom_voice(text, speaker="Vivian", language="English", max_new_tokens=frames + 1)
    rtfs.append((time.perf_counter() - begun) / (len(wavs[0]) / rate))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"ready_s": loaded, "peak_rss_mb": peak, "rtf": sorted(rtfs[1:])[len(rtfs[1:]) // 2]}))
"""
TEXT = "The quick brown fox jumps over the lazy dog, and keeps running far beyond the hills."


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def variant_env(variant: str) -> dict[str, str]:
    if variant == "fast":
        return {"QWEN_TTS_PROFILE": "fast"}
    return server_env(variant)


def measure_server(model: Path, variant: str, data_dir: Path, runs: int, source: Path | None = None) -> dict:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("QWEN_TTS_") and k != "BASE_MODEL_PATH"},
        "CUSTOMVOICE_MODEL_PATH": str(model),
        "QWEN_TTS_DEVICE": "cpu",
        "QWEN_TTS_ATTN": "sdpa",
        "QWEN_TTS_DATA_DIR": str(data_dir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        **variant_env(variant),
    }
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source / "src"), env.get("PYTHONPATH", "")])
    log = open(os.environ.get("BENCH_SERVER_LOG", os.devnull), "a")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "qwen_tts_api.cli", "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=5) as http:
            while True:
                if proc.poll() is not None:
                    why = "BENCH_SERVER_LOG=path keeps its log"
                    raise SystemExit(f"the {variant} server exited with {proc.returncode} ({why})")
                try:
                    if http.get(f"{url}/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        ready = time.perf_counter() - started
        first = run_server(url, True, TEXT)
        timed = [run_server(url, True, TEXT) for _ in range(runs)]
        return {
            "ready_s": ready,
            "first_s": first["total"],
            "peak_rss_mb": peak_rss_mb(proc.pid),
            "ttfa_s": statistics.median(r["ttfa"] for r in timed),
            "rtf": statistics.median(r["total"] / r["audio"] for r in timed),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def measure_package(model: Path, frames: int, runs: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PACKAGE_SCRIPT, str(model), str(frames), str(runs), TEXT],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, default_model="0.6b")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--starts", type=int, default=2, help="starts of each server on one data directory")
    parser.add_argument("--no-package", action="store_true", help="leave the package out")
    parser.add_argument("--baseline", nargs=2, metavar=("DIR", "VARIANT"), help="another checkout's server too")
    args = parser.parse_args()
    model = model_path(args)
    rows: list[tuple[str, dict]] = []
    if not args.no_package:
        rows.append(("package float32", measure_package(model, args.frames, args.runs)))
    if args.baseline:
        source, variant = Path(args.baseline[0]), args.baseline[1]
        data_dir = Path(tempfile.mkdtemp(prefix="qwen-tts-bench-data-"))
        rows.extend(
            (f"{source.name} {variant} ({start})", measure_server(model, variant, data_dir, args.runs, source))
            for start in range(1, args.starts + 1)
        )
    for variant in args.servers or ["auto"]:
        data_dir = Path(tempfile.mkdtemp(prefix="qwen-tts-bench-data-"))
        rows.extend(
            (f"{variant} (start {start})", measure_server(model, variant, data_dir, args.runs))
            for start in range(1, args.starts + 1)
        )
    print(
        f"\nmodel={args.model} frames={args.frames} ({args.frames * FRAME_SECONDS:.1f}s audio) runs={args.runs} "
        f"cpu={cpu_model()} cores={os.cpu_count()}"
    )
    print(f"{'setup':<30}{'ready s':>9}{'first s':>9}{'peak RSS MB':>13}{'TTFA s':>8}{'RTF':>7}")
    for name, row in rows:
        print(
            f"{name:<30}{row['ready_s']:>9.1f}{row.get('first_s', float('nan')):>9.2f}{row['peak_rss_mb']:>13.0f}"
            f"{row.get('ttfa_s', float('nan')):>8.2f}{row['rtf']:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
