"""Where a batched step's time goes, and the throughput ceiling that follows.

Times, on one model object, each part of serving C concurrent requests: prompt prefill
(one at a time and C together), one decoding step for 1 and C rows (talker + code
predictor), the code predictor alone, and codec decoding per frame (one request at a
time, and C requests' chunks in one batched call). From these it prints the best
throughput batching can reach against the serial baseline, before any scheduling overhead:

    serial   = one request at a time: step(1) + decode per frame
    batched  = C requests: step(C) + C x decode per frame, prefills amortised over the frames

    uv run python bench/components.py --model 0.6b --model-dir /tmp/benchmodels
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from latency import TEXT, add_model_arguments, load_official  # noqa: E402 (sibling script)


def timed(fn, repeat: int) -> float:
    fn()  # warm
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, default_model="0.6b")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    _, tts = load_official(args)

    from qwen_tts_api.engine.generation.batching import FrameBatch
    from qwen_tts_api.engine.generation.decoding import StreamingDecoder
    from qwen_tts_api.engine.generation.prompt import build_prompt
    from qwen_tts_api.engine.generation.sampling import SamplingParams

    talker = tts.model.talker
    params = SamplingParams.from_generate_config(tts.generate_defaults)
    prompt = build_prompt(tts, TEXT, "English", speaker="Vivian")
    c = args.concurrency
    figures: dict[str, float] = {}

    with torch.inference_mode():
        figures["prefill x1"] = timed(lambda: talker.model(inputs_embeds=prompt.prefill, use_cache=True), args.repeat)
        together = torch.cat([prompt.prefill] * c)
        figures[f"prefill x{c} together"] = timed(
            lambda: talker.model(inputs_embeds=together, use_cache=True), args.repeat
        )
        for rows in (1, c):
            batch = FrameBatch(tts, params)
            for _ in range(rows):
                batch.add(prompt, max_frames=10_000)
            figures[f"step x{rows}"] = timed(batch.step, args.repeat)
            hidden = torch.cat([r.hidden for r in batch.rows])
            tokens = torch.stack([r.token for r in batch.rows])
            figures[f"code predictor x{rows}"] = timed(
                lambda batch=batch, hidden=hidden, tokens=tokens: batch.codebooks.fill(hidden, tokens), args.repeat
            )
        codes = torch.randint(0, 1000, (c, 16, 48))
        for n in (3, 48):
            one = timed(lambda n=n: StreamingDecoder(tts, n, n)._decode(codes[:1, :, :n]), args.repeat)
            many = timed(lambda n=n: StreamingDecoder(tts, n, n)._decode(codes[:, :, :n]), args.repeat)
            figures[f"decode {n} frames, per frame x1"] = one / n
            figures[f"decode {n} frames, per frame per row x{c} batched"] = many / n / c

    print(f"\n{args.model}, {args.device} {args.dtype}, {torch.get_num_threads()} threads, concurrency {c}")
    for name, seconds in figures.items():
        print(f"  {name:45s} {seconds * 1000:9.1f} ms")
    decode = figures["decode 48 frames, per frame x1"]
    serial_frame = figures["step x1"] + decode
    batched_frame = (figures[f"step x{c}"] + c * decode) / c + figures[f"prefill x{c} together"] / c / args.frames
    print(f"  serial, per frame                             {serial_frame * 1000:9.1f} ms")
    print(f"  batched x{c}, per frame (prefill amortised)     {batched_frame * 1000:9.1f} ms")
    print(f"  throughput ceiling at concurrency {c}: {serial_frame / batched_frame:.2f}x serial")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
