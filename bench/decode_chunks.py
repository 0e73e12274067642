"""Codec decoding per chunk size, on any device: where a stream's decoding time goes.

For each chunk size a stream decodes (1, 2, 4, ... 48 frames: the streaming decoder's
doubling chunks), times our streaming decoder continuing a stream (its state primed with
earlier frames, as mid-stream), the same for C streams in one batched call, C streams each
at a position of its own decoded one after another and then in one call
(``decode_together``, what ``QWEN_TTS_DECODE_TOGETHER`` does), and the package's one-pass
decode of that many frames, side by side in one run. On CUDA every
timing synchronises first, and ``--profile`` prints the operators that took the most time
in one chunk of ``--profile`` frames (torch.profiler): the GPU figures are what a server's
concurrent streams pay serially on its scheduler thread.

    uv run python bench/decode_chunks.py --model 0.6b --model-dir /tmp/benchmodels
    python bench/decode_chunks.py --model 0.6b --device cuda:0 --dtype bfloat16 --profile 48
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from latency import add_model_arguments, load_official  # noqa: E402 (sibling script)

CHUNKS = (1, 2, 4, 8, 16, 32, 48)


def synchronised(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def timed(fn, repeat: int, sync, setup=lambda: None) -> float:
    setup()
    fn()  # warm
    runs = []
    for _ in range(repeat):
        setup()
        sync()
        started = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, default_model="0.6b")
    parser.add_argument("--streams", type=int, default=16, help="streams decoded together in the batched column")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", type=int, default=0, metavar="FRAMES", help="profile one chunk of FRAMES")
    args = parser.parse_args()
    _, tts = load_official(args)

    from qwen_tts_api.engine.generation.streaming_decoder import StreamingDecoder, decode_together

    device = torch.device(args.device)
    sync = synchronised(device)
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2048, (args.streams, 16, 64 + max(CHUNKS)), generator=generator).to(device)
    package = tts.model.speech_tokenizer.model.decoder

    def primed(streams: int) -> StreamingDecoder:
        decoder = StreamingDecoder(tts)
        decoder.decode_batch(codes[:streams, :, :64])  # mid-stream: 64 frames of cache and context
        return decoder

    def continue_from(streams: int, frames: int):
        """(setup, run): setup puts the primed state back, run decodes the next ``frames``."""
        decoder = primed(streams)
        primed_state = decoder.state()

        def setup():
            decoder.restore(primed_state)  # a state is never written in place

        return setup, lambda: decoder.decode_batch(codes[:streams, :, 64 : 64 + frames])

    def at_positions(streams: int, frames: int):
        """(setup, apart, together): C streams primed with 8 to 63 frames each, their next
        ``frames`` decoded one stream after another, or in one call."""
        decoders, states, starts = [], [], [8 + (55 * s) // max(1, streams - 1) for s in range(streams)]
        for stream, start in enumerate(starts):
            decoder = StreamingDecoder(tts)
            decoder.run(codes[stream, :, :start].T)
            decoders.append(decoder)
            states.append(decoder.state())
        chunks = [codes[s, :, start : start + frames].T for s, start in enumerate(starts)]

        def setup():
            for decoder, state in zip(decoders, states):
                decoder.restore(state)

        def apart():
            for decoder, chunk in zip(decoders, chunks):
                decoder.run(chunk)

        return setup, apart, lambda: decode_together(tts, decoders, chunks)

    print(
        f"model={args.model} device={args.device} dtype={args.dtype} codec dtype={next(package.parameters()).dtype} "
        f"streams={args.streams} repeat={args.repeat}"
    )
    print(
        f"{'frames':>6}{'ours x1 ms':>12}{'per frame':>11}{f'ours x{args.streams} ms':>14}{'per stream':>12}"
        f"{f'apart x{args.streams}':>13}{f'together x{args.streams}':>16}{'package x1 ms':>15}"
    )
    benchmark_modes = [False, True] if device.type == "cuda" else [False]
    with torch.inference_mode():
        for benchmark in benchmark_modes:  # cuDNN's own choice of algorithm, then its measured one
            torch.backends.cudnn.benchmark = benchmark
            if device.type == "cuda":
                print(f"torch.backends.cudnn.benchmark = {benchmark}")
            for frames in CHUNKS:
                setup, run = continue_from(1, frames)
                one = timed(run, args.repeat, sync, setup)
                setup, run = continue_from(args.streams, frames)
                many = timed(run, args.repeat, sync, setup)
                setup, apart, together = at_positions(args.streams, frames)
                one_by_one, shared = timed(apart, args.repeat, sync, setup), timed(together, args.repeat, sync, setup)
                theirs = timed(lambda frames=frames: package(codes[:1, :, :frames]), args.repeat, sync)
                print(
                    f"{frames:>6}{one * 1e3:>12.2f}{one * 1e3 / frames:>11.2f}{many * 1e3:>14.2f}"
                    f"{many * 1e3 / args.streams:>12.2f}{one_by_one * 1e3:>13.2f}{shared * 1e3:>16.2f}"
                    f"{theirs * 1e3:>15.2f}"
                )
        torch.backends.cudnn.benchmark = False
        if args.profile:
            setup, run = continue_from(1, args.profile)
            setup()
            run()
            setup()
            sync()
            activities = [torch.profiler.ProfilerActivity.CPU]
            if device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities) as profile:
                run()
                sync()
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(f"\none chunk of {args.profile} frames, ours x1, by {key}:")
            print(profile.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
            print("by cpu_time_total:")
            print(profile.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
