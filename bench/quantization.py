"""What QWEN_TTS_QUANTIZE (int8, int8-weight-only) changes in the model's decisions, against bfloat16.

The model (random weights of a published size) first generates --frames frames in
bfloat16, sampling as published. Then both variants are teacher-forced along those same
codes: every talker step and every code-predictor pass sees the bfloat16 run's tokens, so
their logits can be compared position by position. Printed per part (talker: first
codebook; code predictor: codebooks 2-16):

    relative error   ||logits_int8 - logits_bf16|| / ||logits_bf16||, median and p95
    agreement        how often the int8 logits' best token is the bfloat16 logits' best token

Random weights make noise, so this measures how far int8 moves the arithmetic, not how
speech sounds; with real weights, listening is the user's to do.

    uv run python bench/quantization.py --model 0.6b --frames 40 --model-dir /tmp/benchmodels
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch
from latency import TEXT, add_model_arguments, cpu_model, load_official  # noqa: E402 (sibling script)

from qwen_tts_api.engine.generation.batching import FrameBatch
from qwen_tts_api.engine.generation.code_predictor import FrameKeys
from qwen_tts_api.engine.generation.kv_cache import SlotCache
from qwen_tts_api.engine.generation.prompt import build_prompt
from qwen_tts_api.engine.generation.sampling import SamplingParams
from qwen_tts_api.engine.generation.transformer import DecoderStack
from qwen_tts_api.engine.models.quantize import QUANTIZE_MODES, quantize_int8


@torch.inference_mode()
def generate(tts, prompt, frames: int) -> torch.Tensor:
    batch = FrameBatch(tts, SamplingParams.from_generate_config(tts.generate_defaults))
    batch.add(prompt, frames)
    codes = []
    while len(batch):
        made, _ = batch.step()
        codes += [c for _, c in made]
    return torch.stack(codes)


@torch.inference_mode()
def forced_logits(tts, prompt, codes: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Talker logits before each frame and code-predictor logits for codebooks 2-16, with
    every input token taken from ``codes`` (F, 16)."""
    talker = tts.model.talker
    predictor = talker.code_predictor
    stack, small = DecoderStack(talker.model), DecoderStack(predictor.model)
    cache = SlotCache(stack)
    small.ensure_positions(17)
    prefill = talker.model(inputs_embeds=prompt.prefill, use_cache=True)
    length = prompt.prefill.shape[1]
    cache.reserve(1, length + codes.shape[0] + 1)
    kv = prefill.past_key_values
    cache.load(0, [layer.keys[0] for layer in kv.layers], [layer.values[0] for layer in kv.layers])
    hidden = prefill.last_hidden_state[:, -1:]
    talker_logits, predictor_logits = [], []
    for frame, row in enumerate(codes):
        talker_logits.append(talker.codec_head(hidden[:, -1]).float()[0])
        embeds = [talker.get_input_embeddings()(row[:1].view(1, 1))]
        frame_cache, start = FrameKeys(len(small.layers)), 0
        step = torch.cat([hidden, embeds[0]], dim=1)
        for group in range(15):
            end = start + step.shape[1]
            rotary = small.cos[None, None, start:end], small.sin[None, None, start:end]
            out = small.forward(predictor.small_to_mtp_projection(step), rotary, frame_cache, mask=None)
            start = end
            predictor_logits.append(predictor.lm_head[group](out[:, -1]).float()[0])
            step = predictor.model.get_input_embeddings()[group](row[group + 1 : group + 2].view(1, 1))
            embeds.append(step)
        text = prompt.trailing_text[:, frame : frame + 1] if frame < prompt.trailing_text.shape[1] else prompt.tts_pad
        step_input = torch.cat(embeds, dim=1).sum(1, keepdim=True) + text
        position = torch.tensor([length + frame])
        cache.prepare_step(position, length + frame + 1)
        hidden = stack.forward(step_input, stack.rotary(position.view(1, 1)), cache, mask=None)
    return talker_logits, predictor_logits


def compare(name: str, reference: list[torch.Tensor], other: list[torch.Tensor]) -> dict:
    errors = [float((o - r).norm() / r.norm()) for r, o in zip(reference, other)]
    agree = sum(int(o.argmax() == r.argmax()) for r, o in zip(reference, other)) / len(reference)
    p95 = sorted(errors)[int(0.95 * (len(errors) - 1))]
    print(f"  {name:<28}{statistics.median(errors):>12.4f}{p95:>10.4f}{agree:>12.1%}{len(errors):>8}")
    return {"median_rel_error": statistics.median(errors), "p95_rel_error": p95, "agreement": agree}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, default_model="0.6b")
    parser.set_defaults(dtype="bfloat16", frames=40)
    args = parser.parse_args()
    _, tts = load_official(args)
    torch.manual_seed(0)
    prompt = build_prompt(tts, TEXT, "English", speaker="Vivian")
    codes = generate(tts, prompt, args.frames)
    reference = forced_logits(tts, prompt, codes)
    original, quantised = tts.model.talker, {}
    for mode, kernel in QUANTIZE_MODES.items():  # each on its own copy of the talker
        tts.model.talker = copy.deepcopy(original)
        quantize_int8(tts.model.talker, kernel)
        quantised[mode] = forced_logits(tts, prompt, codes)
    tts.model.talker = original
    print(f"\nmodel={args.model} frames={len(codes)} reference={args.dtype} cpu={cpu_model()}")
    for mode, logits in quantised.items():
        print(f"  {mode + ' against ' + args.dtype:<28}{'median err':>12}{'p95 err':>10}{'agreement':>12}{'n':>8}")
        compare("talker (codebook 1)", reference[0], logits[0])
        compare("code predictor (2-16)", reference[1], logits[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
