"""Where a batched step's time goes, and the throughput ceiling that follows.

Times, on one model object, each part of serving C concurrent requests: prompt prefill
(one at a time and C together), one decoding step for 1 and C rows (talker + code
predictor), the code predictor alone, and codec decoding per frame (one request at a
time, and C requests' chunks in one batched call). From these it prints the best
throughput batching can reach against the serial baseline, before any scheduling overhead:

    serial   = one request at a time: step(1) + decode per frame
    batched  = C requests: step(C) + C x decode per frame, prefills amortised over the frames

It also times one decoder layer's linears (q/k/v/o, gate/up/down of the talker's first
layer) at 1, 4 and 8 rows in each kernel: float32, int8 weight-only, our batch-invariant
int8 (per-row activation scales), and fbgemm's plain dynamic int8 (one scale for all rows,
not batch-invariant: the reference for what the pinning costs); and the code predictor's
output heads at 1 and 8 rows, as one BLAS product and row by row (what the step runs). ``--quantize`` times the
step and prefill rows with the talker quantised as ``QWEN_TTS_QUANTIZE`` would; ``--compile``
adds the step rows of the compiled forwards (``QWEN_TTS_COMPILE=on``) beside the eager ones,
and the time their graphs took to compile. ``--prefill-chunk N`` times a 400-position prompt
(an in-context clone's) joining a speaking row, prefilled whole and in chunks of N
(``QWEN_TTS_PREFILL_CHUNK``): the speaking row's longest wait and the joining row's first frame;
and C prompts of 100 positions (a paragraph) joining it at once, whole and in groups of N.

    uv run python bench/components.py --model 0.6b --model-dir /tmp/benchmodels
    uv run python bench/components.py --model 0.6b --model-dir /tmp/benchmodels --quantize int8
    uv run python bench/components.py --model 0.6b --model-dir /tmp/benchmodels --quantize int8 --compile
    uv run python bench/components.py --model 0.6b --model-dir /tmp/benchmodels --quantize int8 --prefill-chunk 64
"""

from __future__ import annotations

import argparse
import copy
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


LAYER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def kernel_rows(talker, repeat: int) -> dict[str, float]:
    """One talker layer's seven linears (float, before any quantising), per kernel and rows."""
    from qwen_tts_api.engine.models.quantize import Int8Linear

    layer = talker.model.layers[0]
    floats = [getattr(layer.self_attn, n, None) or getattr(layer.mlp, n) for n in LAYER_LINEARS]
    torch.backends.quantized.engine = "fbgemm"
    plain_dynamic = torch.ao.nn.quantized.dynamic.Linear.from_float
    kernels = {
        "float32": [copy.deepcopy(f).float() for f in floats],
        "int8 weight-only": [Int8Linear.of(f, "weight-only") for f in floats],
        "int8 per-row dynamic (ours)": [Int8Linear.of(f, "dynamic") for f in floats],
        "int8 fbgemm dynamic, one scale": [plain_dynamic(_qconfigured(copy.deepcopy(f).float())) for f in floats],
    }
    figures = {}
    weights = sum(f.weight.numel() for f in floats)
    for rows in (1, 4, 8):
        inputs = [torch.randn(rows, f.weight.shape[1]) for f in floats]
        for name, modules in kernels.items():
            figures[f"layer linears ({weights / 1e6:.1f} M weights) {name} x{rows}"] = timed(
                lambda modules=modules, inputs=inputs: [m(x) for m, x in zip(modules, inputs)], repeat * 5
            )
    figures.update(head_rows(talker.code_predictor.lm_head, repeat))
    return figures


def head_rows(heads, repeat: int) -> dict[str, float]:
    """The code predictor's fifteen output heads (float, never quantised) for a frame: BLAS's
    product over all rows at once, and one matrix-vector product per row (``transformer.per_row``,
    what the step runs: a row's logits then never depend on its batch)."""
    from qwen_tts_api.engine.generation.transformer import per_row

    shape = "x".join(str(n) for n in heads[0].weight.shape)
    figures = {}
    for rows in (1, 8):
        x = torch.randn(rows, heads[0].weight.shape[1])
        figures[f"15 output heads ({shape}) F.linear x{rows}"] = timed(
            lambda x=x: [torch.nn.functional.linear(x, h.weight, h.bias) for h in heads], repeat * 5
        )
        figures[f"15 output heads ({shape}) per row x{rows}"] = timed(
            lambda x=x: [per_row(x, h.weight, h.bias) for h in heads], repeat * 5
        )
    return figures


def _qconfigured(linear: torch.nn.Linear) -> torch.nn.Linear:
    linear.qconfig = torch.ao.quantization.default_dynamic_qconfig
    return linear


def joining_rows(tts, params, prompt, chunk: int, positions: int = 400, count: int = 1) -> dict[str, float]:
    """``count`` prompts of ``positions`` each (400: an in-context clone's prompt) join at once
    a batch where one row is speaking: the speaking row's longest wait between two frames,
    and the wait for the last joining row's first frame, with the prefill whole and in
    chunks (several prompts: in groups of at most a chunk's positions)."""
    import dataclasses

    from qwen_tts_api.engine.generation.batching import FrameBatch
    from qwen_tts_api.engine.generation.rows import RowSpec

    repeats = -(-positions // prompt.prefill.shape[1])
    long = dataclasses.replace(prompt, prefill=torch.cat([prompt.prefill] * repeats, dim=1)[:, :positions])
    what = f"join a {positions}-position prompt" if count == 1 else f"join {count} prompts of {positions} positions"
    figures = {}
    for label, size in (("whole", 0), (f"chunks of {chunk}", chunk)):
        batch = FrameBatch(tts, params, prefill_chunk=size)
        speaking = batch.add(prompt, max_frames=10_000)
        batch.step()
        started = last_frame = time.perf_counter()
        waiting = set(batch.add_many([RowSpec(long, 10_000) for _ in range(count)]))
        longest = 0.0
        while waiting:
            frames = [row for row, _ in batch.step()[0]]
            now = time.perf_counter()
            if speaking in frames:
                longest, last_frame = max(longest, now - last_frame), now
            waiting -= set(frames)
        figures[f"{what}, {label}: speaking row's longest wait"] = longest
        first = "its first frame" if count == 1 else "the last one's first frame"
        figures[f"{what}, {label}: {first}"] = now - started
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, default_model="0.6b")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quantize", choices=["none", "int8", "int8-weight-only"], default="none")
    parser.add_argument("--compile", action="store_true", help="also time the compiled step")
    parser.add_argument(
        "--codec-bfloat16",
        action="store_true",
        help="also time the codec in bfloat16 (QWEN_TTS_CODEC_DTYPE=bfloat16), the package's and ours",
    )
    parser.add_argument(
        "--prefill-chunk",
        type=int,
        default=0,
        help="also time a long prompt (an in-context clone's) joining a speaking row, whole and in chunks of this",
    )
    args = parser.parse_args()
    _, tts = load_official(args)

    from qwen_tts_api.engine.generation import codec_layers
    from qwen_tts_api.engine.generation.batching import FrameBatch
    from qwen_tts_api.engine.generation.prompt import build_prompt
    from qwen_tts_api.engine.generation.sampling import SamplingParams
    from qwen_tts_api.engine.generation.step_parts import StepParts
    from qwen_tts_api.engine.generation.streaming_decoder import StreamingDecoder

    talker = tts.model.talker
    params = SamplingParams.from_generate_config(tts.generate_defaults)
    prompt = build_prompt(tts, TEXT, "English", speaker="Vivian")
    c = args.concurrency
    figures: dict[str, float] = {}

    with torch.inference_mode():
        figures.update(kernel_rows(talker, args.repeat))
        if args.quantize != "none":
            from qwen_tts_api.engine.models.quantize import QUANTIZE_MODES, quantize_int8

            quantize_int8(talker, QUANTIZE_MODES[args.quantize])
        figures["prefill x1"] = timed(lambda: talker.model(inputs_embeds=prompt.prefill, use_cache=True), args.repeat)
        together = torch.cat([prompt.prefill] * c)
        figures[f"prefill x{c} together"] = timed(
            lambda: talker.model(inputs_embeds=together, use_cache=True), args.repeat
        )
        variants = {"": StepParts.build(talker, params)}
        if args.compile:
            started = time.perf_counter()
            from qwen_tts_api.engine.generation.compiled import talker_graph_rows

            # As the server builds it: on a CPU, the talker compiled for one row only.
            rows_compiled = talker_graph_rows(talker.device)
            variants[" compiled"] = compiled = StepParts.build(talker, params, compiled=True, talker_rows=rows_compiled)
            for rows in (2, 1):  # every graph: several rows and one
                batch = FrameBatch(tts, params, compiled)
                for _ in range(rows):
                    batch.add(prompt, max_frames=10_000)
                batch.step()
            figures["compiling the step's graphs (once; cached on disk)"] = time.perf_counter() - started
        for rows in (1, c):
            for suffix, parts in variants.items():
                batch = FrameBatch(tts, params, parts)
                for _ in range(rows):
                    batch.add(prompt, max_frames=10_000)
                figures[f"step x{rows}{suffix}"] = timed(batch.step, args.repeat)
                hidden = torch.cat([r.hidden for r in batch.rows])
                tokens = torch.stack([r.token for r in batch.rows])
                figures[f"code predictor x{rows}{suffix}"] = timed(
                    lambda batch=batch, hidden=hidden, tokens=tokens: batch.codebooks.fill(hidden, tokens), args.repeat
                )
        if args.prefill_chunk:
            figures.update(joining_rows(tts, params, prompt, args.prefill_chunk))
            figures.update(joining_rows(tts, params, prompt, args.prefill_chunk, positions=100, count=c))
        codes = torch.randint(0, 1000, (c, 16, 48))
        package_decoder = tts.model.speech_tokenizer.model.decoder
        for dtype in (torch.float32, torch.bfloat16) if args.codec_bfloat16 else (torch.float32,):
            package_decoder.to(dtype)
            codec_layers.forget_kept_weights(package_decoder)  # our decoder's layouts, made again in this dtype
            suffix = "" if dtype == torch.float32 else ", bfloat16"
            figures[f"decode 48 frames, per frame x1, the package's one pass{suffix}"] = (
                timed(lambda: package_decoder(codes[:1]), args.repeat) / 48
            )
            for n in (3, 48):
                one = timed(lambda n=n: StreamingDecoder(tts, n, n).decode_batch(codes[:1, :, :n]), args.repeat)
                many = timed(lambda n=n: StreamingDecoder(tts, n, n).decode_batch(codes[:, :, :n]), args.repeat)
                figures[f"decode {n} frames, per frame x1{suffix}"] = one / n
                figures[f"decode {n} frames, per frame per row x{c} batched{suffix}"] = many / n / c
        package_decoder.to(torch.float32)

    print(
        f"\n{args.model}, {args.device} {args.dtype}, quantize {args.quantize}, "
        f"{torch.get_num_threads()} threads, concurrency {c}"
    )
    for name, seconds in figures.items():
        print(f"  {name:70s} {seconds * 1000:9.2f} ms")
    decode = figures["decode 48 frames, per frame x1"]
    serial_frame = figures["step x1"] + decode
    batched_frame = (figures[f"step x{c}"] + c * decode) / c + figures[f"prefill x{c} together"] / c / args.frames
    print(f"  serial, per frame                             {serial_frame * 1000:9.1f} ms")
    print(f"  batched x{c}, per frame (prefill amortised)     {batched_frame * 1000:9.1f} ms")
    print(f"  throughput ceiling at concurrency {c}: {serial_frame / batched_frame:.2f}x serial")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
