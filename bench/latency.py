"""Time to first audio, total latency and real-time factor, side by side in one run.

Ways to get the same utterance (a fixed number of frames) from the same model:
  official   qwen_tts generate_custom_voice called directly (what other wrappers do), in --dtype
  engine     our engine (generation loop + streaming decoder) called directly, in the same
             process and on the same model object as `official`: the pure implementation
             comparison, free of per-process memory placement (matters when weights stream
             from RAM, as on a CPU)
  stream     our server (its own process) with the first --server variant, chunked streaming (pcm)
  whole      our server with each --server variant, one complete response (pcm, "stream": false)

A --server variant is a QWEN_TTS_DTYPE value (default "auto", what a user gets without
setting anything), optionally followed by "+" options: "+int8" / "+int8-weight-only"
(QWEN_TTS_QUANTIZE), "+compile" / "+eager" (QWEN_TTS_COMPILE=on / off), "+nographs"
(QWEN_TTS_CUDA_GRAPHS=off), "+thread" / "+nothread" (QWEN_TTS_DECODE_THREAD=on / off),
"+codec-bfloat16" / "+codec-float32" (QWEN_TTS_CODEC_DTYPE). A
compiled server compiles during its warm-up, before it is measured. BENCH_SERVER_LOG=path
appends the servers' logs to that file (dropped by default).

Models are random-weight checkpoints built on the spot by `qwen-tts-api demo-models`' code:
"demo" (tiny) or "0.6b" / "1.7b" (the published configurations). All generate exactly
--frames frames (end-of-speech never wins with random weights), sampling with the
package's default parameters.

    uv run python bench/latency.py --model demo
    uv run python bench/latency.py --model 0.6b --frames 50 --runs 3 --server auto --server auto+int8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import torch

from qwen_tts_api.cli import quiet_third_party_logs
from qwen_tts_api.devtools import free_port, wait_until_ready
from qwen_tts_api.devtools.demo_models import build_model, write_text_tokenizer

TEXT = "The quick brown fox jumps over the lazy dog, and keeps running far beyond the hills."
SAMPLE_RATE = 24000
FRAME_SECONDS = 0.08
PACKAGE_SAMPLING = {"do_sample": True, "subtalker_dosample": True}


def build(kind: str, frames: int, directory: Path) -> Path:
    path = directory / f"{kind}-customvoice"
    size = "tiny" if kind == "demo" else kind
    if not (path / "config.json").exists():
        started = time.perf_counter()
        generation = {**PACKAGE_SAMPLING, "max_new_tokens": frames}
        build_model(path, "custom_voice", seed=0, size=size, generation=generation)
        print(f"built {kind} model in {time.perf_counter() - started:.0f}s at {path}", file=sys.stderr)
    else:  # the frame budget changes between runs; a folder built before may have an older tokenizer
        config = json.loads((path / "generation_config.json").read_text())
        (path / "generation_config.json").write_text(json.dumps({**config, "max_new_tokens": frames}, indent=2))
        write_text_tokenizer(path, size)
    return path


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str = "demo") -> None:
    """The options every benchmark shares: which model, its frame budget, device and dtype."""
    parser.add_argument("--model", choices=["demo", "0.6b", "1.7b"], default=default_model)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="the package's")
    parser.add_argument(
        "--server",
        action="append",
        dest="servers",
        metavar="VARIANT",
        help='our server\'s QWEN_TTS_DTYPE, optionally "+int8" (repeatable; default: auto)',
    )
    parser.add_argument("--model-dir", type=Path, help="where to build/keep models (default: a temp dir)")


ATTN = "sdpa"


def model_path(args: argparse.Namespace) -> Path:
    """The benchmark model's folder, built first if needed."""
    quiet_third_party_logs()
    directory = args.model_dir or Path(tempfile.mkdtemp(prefix="qwen-tts-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    return build(args.model, args.frames, directory)


def load_official(args: argparse.Namespace):
    """Build the benchmark model if needed and load it with the official package: (path, tts)."""
    path = model_path(args)

    from qwen_tts import Qwen3TTSModel

    tts = Qwen3TTSModel.from_pretrained(
        str(path), device_map=args.device, dtype=getattr(torch, args.dtype), attn_implementation=ATTN
    )
    return path, tts


def server_env(variant: str) -> dict[str, str]:
    """A --server variant ("auto", "float32", "bfloat16+int8", "auto+int8+compile", ...) as
    environment variables."""
    dtype, *options = variant.split("+")
    env = {"QWEN_TTS_DTYPE": dtype, "QWEN_TTS_QUANTIZE": "none"}
    for option in options:
        if option in ("int8", "int8-weight-only"):
            env["QWEN_TTS_QUANTIZE"] = option
        elif option in ("compile", "eager"):
            env["QWEN_TTS_COMPILE"] = "on" if option == "compile" else "off"
        elif option == "nographs":
            env["QWEN_TTS_CUDA_GRAPHS"] = "off"
        elif option in ("thread", "nothread"):
            env["QWEN_TTS_DECODE_THREAD"] = "on" if option == "thread" else "off"
        elif option in ("codec-bfloat16", "codec-float32"):
            env["QWEN_TTS_CODEC_DTYPE"] = option.removeprefix("codec-")
        else:
            raise SystemExit(f"unknown --server option {option!r} in {variant!r}")
    return env


@contextmanager
def server_process(model: Path, device: str, variant: str, attn: str, extra_env: dict[str, str] | None = None):
    """Our server as its own process, as it runs in production (one process shared with the
    benchmark client and the official model would measure their GIL contention instead)."""
    port = free_port()
    env = {
        **os.environ,
        "CUSTOMVOICE_MODEL_PATH": str(model),
        "QWEN_TTS_DEVICE": device,
        **server_env(variant),
        "QWEN_TTS_ATTN": attn,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        **(extra_env or {}),
    }
    env.pop("BASE_MODEL_PATH", None)
    # BENCH_SERVER_LOG: append the servers' logs there (why a server failed to start, what it
    # compiled); by default they are dropped so the benchmark's table stays readable.
    log_path = os.environ.get("BENCH_SERVER_LOG")
    log = open(log_path, "a") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen_tts_api.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # /ready: loaded and warmed up, so the warm-up is not part of any measurement.
        wait_until_ready(proc, url, timeout=1800)  # a compiled step compiles first
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if log_path:
            log.close()


def run_official(tts, frames: int) -> dict:
    started = time.perf_counter()
    wavs, _ = tts.generate_custom_voice(TEXT, speaker="Vivian", language="English", max_new_tokens=frames + 1)
    total = time.perf_counter() - started
    return {"ttfa": total, "total": total, "audio": len(wavs[0]) / SAMPLE_RATE}


def run_engine(engine, frames: int) -> dict:
    import asyncio

    from qwen_tts_api.engine.runtime.jobs import SpeechJob
    from qwen_tts_api.text.prepare import prepare

    async def go() -> dict:
        started = time.perf_counter()
        first = None
        samples = 0
        job = SpeechJob(text=prepare(TEXT, [], frames), language="English", speaker="Vivian")
        async for chunk in engine.start("customvoice", job):
            if first is None:
                first = time.perf_counter() - started
            samples += len(chunk)
        return {"ttfa": first, "total": time.perf_counter() - started, "audio": samples / SAMPLE_RATE}

    return asyncio.run(go())


def speech_body(stream: bool, text: str = TEXT) -> dict:
    """The benchmarks' /v1/audio/speech request: raw pcm, so no encoder is timed."""
    return {"model": "qwen3-tts", "input": text, "voice": "alloy", "response_format": "pcm", "stream": stream}


def run_server(url: str, stream: bool, text: str = TEXT) -> dict:
    body = speech_body(stream, text)
    received = 0
    first = None
    with httpx.Client(timeout=600) as http:
        started = time.perf_counter()
        with http.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                if chunk and first is None:
                    first = time.perf_counter() - started
                received += len(chunk)
        total = time.perf_counter() - started
    return {"ttfa": first or total, "total": total, "audio": received / 2 / SAMPLE_RATE}


def save_json(args: argparse.Namespace, **results) -> None:
    """The run's arguments and results, to ``--json`` (every benchmark's format)."""
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2))


def text_tokens(path: Path, text: str = TEXT) -> int:
    """How many tokens the model's tokenizer makes of ``text`` (a prompt's length follows:
    the published sizes' benchmark tokenizer reads common words whole, as the real one does)."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(path))(text)["input_ids"])


def cpu_model() -> str:
    """The processor's model name (what a figure must be recorded with)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarise(name: str, runs: list[dict]) -> dict:
    ttfa = statistics.median(r["ttfa"] for r in runs)
    total = statistics.median(r["total"] for r in runs)
    audio = statistics.median(r["audio"] for r in runs)
    return {"name": name, "ttfa_s": ttfa, "total_s": total, "audio_s": audio, "rtf": total / audio}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--engine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time our engine in-process (--no-engine: leave it out; on a GPU it runs eagerly, slowly)",
    )
    args = parser.parse_args()
    path, official = load_official(args)
    from qwen_tts_api.engine.models.loading import LoadedModel
    from qwen_tts_api.engine.runtime.engine import Engine

    engine = Engine(
        {
            "customvoice": LoadedModel(
                kind="customvoice",
                name=path.name,
                path=path,
                tts=official,
                speakers=["Vivian"],
                languages=["english"],
                size_tag="0b6",
                max_new_tokens=args.frames,
            )
        }
    )
    servers = args.servers or ["auto"]
    results: dict[str, list[dict]] = {"official": [], "engine": [], "stream": []}
    if not args.engine:
        del results["engine"]
    results.update({f"whole {variant}": [] for variant in servers})
    with ExitStack() as stack:
        urls = {variant: stack.enter_context(server_process(path, args.device, variant, ATTN)) for variant in servers}
        first = urls[servers[0]]
        # Warm-up: one of each, not counted.
        run_official(official, args.frames)
        if args.engine:
            run_engine(engine, args.frames)
        run_server(first, True)
        for url in urls.values():
            run_server(url, False)
        for _ in range(args.runs):  # interleaved, so machine noise hits all of them alike
            results["official"].append(run_official(official, args.frames))
            if args.engine:
                results["engine"].append(run_engine(engine, args.frames))
            results["stream"].append(run_server(first, True))
            for variant, url in urls.items():
                results[f"whole {variant}"].append(run_server(url, False))

    rows = [summarise(name, runs) for name, runs in results.items()]
    base = rows[0]
    print(
        f"\nmodel={args.model} frames={args.frames} ({args.frames * FRAME_SECONDS:.1f}s audio) device={args.device} "
        f"package dtype={args.dtype} stream server={servers[0]} runs={args.runs} text_tokens={text_tokens(path)} "
        f"torch_threads={torch.get_num_threads()} cpu={cpu_model()}"
    )
    print(f"{'path':<20}{'TTFA s':>10}{'total s':>10}{'RTF':>8}{'TTFA/official':>15}{'total/official':>16}")
    for row in rows:
        print(
            f"{row['name']:<20}{row['ttfa_s']:>10.3f}{row['total_s']:>10.3f}{row['rtf']:>8.3f}"
            f"{row['ttfa_s'] / base['total_s']:>15.3f}{row['total_s'] / base['total_s']:>16.3f}"
        )
    if args.json:
        save_json(args, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
