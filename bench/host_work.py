"""The engine's own loop without HTTP: N requests of F frames through the scheduler and the
runner in this process, the scheduler driven by hand, decoding inline or on the audio
thread. On the tiny demo model the step's arithmetic is small, so this mostly measures the
host work around it (the scheduler's decide/update, the runner's bookkeeping, decoding
hand-off), which is what a refactor of the runtime must not grow.

    uv run python bench/host_work.py --requests 8 --frames 50 --repeat 3 --decode-thread on
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from qwen_tts_api.constants import ModelKind
from qwen_tts_api.devtools import cpu_settings
from qwen_tts_api.devtools.demo_models import build_demo_models
from qwen_tts_api.engine.models.loading import load_model
from qwen_tts_api.engine.runtime.admission import Admission
from qwen_tts_api.engine.runtime.audio_worker import AudioWorker
from qwen_tts_api.engine.runtime.jobs import EngineConfig, SamplingChoice, SpeechJob
from qwen_tts_api.engine.runtime.runner import BatchRunner
from qwen_tts_api.engine.runtime.scheduler import Scheduler
from qwen_tts_api.engine.runtime.stream import SynthesisStream
from qwen_tts_api.text.prepare import prepare

TEXT = "Hello there, this is a benchmark of the host work per step."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--decode-thread", choices=["on", "off"], default="on")
    parser.add_argument("--decode-together", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args()
    torch.set_num_threads(2)
    models = Path(tempfile.mkdtemp(prefix="qwen-tts-host-work-"))
    build_demo_models(models, seed=0)
    model = load_model(ModelKind.CUSTOMVOICE, models / "customvoice", cpu_settings(), dtype="float32")
    config = EngineConfig(
        max_batch=args.requests, decode_thread=args.decode_thread, decode_together=args.decode_together
    )
    worker = AudioWorker() if args.decode_thread == "on" else None
    runner = BatchRunner({ModelKind.CUSTOMVOICE: model}, config, worker)
    scheduler = Scheduler(runner, config, Admission(4 * args.requests, workers=args.requests), start=False)
    loop = asyncio.new_event_loop()  # never run: the streams' items wait in it
    text = prepare(TEXT, model.control_tokens, model.max_new_tokens)
    assert text is not None

    def run() -> float:
        for seed in range(args.requests):
            job = SpeechJob(
                text=text,
                language="English",
                speaker=model.speakers[0],
                max_frames=args.frames,
                sampling=SamplingChoice(seed=seed),
            )
            scheduler.submit(ModelKind.CUSTOMVOICE, job, SynthesisStream(loop, 600, worker))
        started = time.perf_counter()
        while scheduler.receive(block=False):
            scheduler.iterate()
            if not scheduler.active and not scheduler.waiting:
                break
        if worker is not None:  # its last audio decoded too
            done = threading.Event()
            worker.submit(object(), done.set)
            done.wait()
        return time.perf_counter() - started

    run()  # warm-up
    seconds = [run() for _ in range(args.repeat)]
    print(
        f"requests={args.requests} frames={args.frames} decode_thread={args.decode_thread} "
        f"seconds: {' '.join(f'{s:.3f}' for s in seconds)} (median {statistics.median(seconds):.3f})"
    )


if __name__ == "__main__":
    main()
