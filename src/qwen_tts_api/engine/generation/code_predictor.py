"""Codebooks 2..16 of a frame for every row: the code predictor's 15 passes and their token
choices, as one function of tensors (``frame``), which runs as it is or as one compiled
graph (``compiled.CompiledFrame``; on CUDA one CUDA graph a frame).

Each frame starts the code predictor afresh: 17 positions, every row in lock-step. The
first pass reads the talker's hidden state and the first codebook's embedding (two
positions), each later pass the code just chosen. Keys and values are joined pass by pass
(``FrameKeys``); nothing outlives the frame. Every draw a frame makes is drawn before it
starts (``uniform_draws``), so the graph holds no random generator, and a seeded row's
draws come from its own generator alone.
"""

from __future__ import annotations

import torch

from .compiled import CompiledFrame
from .kv_cache import KVWriter
from .sampling import ChoiceTable, RowSampling, SamplingParams, choose_among_best, uniform_draws
from .transformer import DecoderStack, per_row


class FrameKeys(KVWriter):
    """One frame's keys and values per layer, joined pass after pass (17 positions at most)."""

    def __init__(self, layers: int):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        old_keys, old_values = self.keys[layer], self.values[layer]
        if old_keys is not None and old_values is not None:
            keys, values = torch.cat([old_keys, keys], dim=2), torch.cat([old_values, values], dim=2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values


class CodePredictor:
    def __init__(self, talker, params: SamplingParams):
        predictor = talker.code_predictor
        self.first_embedding = talker.get_input_embeddings()
        self.embeddings = predictor.model.get_input_embeddings()
        self.heads = predictor.lm_head
        self.project = predictor.small_to_mtp_projection
        self.groups = talker.config.num_code_groups - 1
        self.sampler = params.predictor
        self.stack = DecoderStack(predictor.model)
        self.stack.ensure_positions(self.groups + 2)
        self.choices = ChoiceTable(talker.device, predictor.config.vocab_size, params.predictor)
        self.graph: CompiledFrame | None = None  # set by StepParts.build(compiled=True)

    @torch.inference_mode()
    def fill(self, hidden: torch.Tensor, first: torch.Tensor, samplings: list[RowSampling] | None = None):
        """``hidden`` (B, 1, D) is the talker's last hidden state, ``first`` (B,) the
        first-codebook tokens, ``samplings`` each row's (default: this filler's sampler).
        Returns codes (B, 16), their input embeddings (B, 16, D) and whether each row's
        logits stayed finite (B,)."""
        rows = first.shape[0]
        generators: list[torch.Generator | None]
        if samplings is None:
            samplers, generators = [self.sampler] * rows, [None] * rows
        else:
            samplers, generators = [s.params.predictor for s in samplings], [s.generator for s in samplings]
        choices = self.choices.of(samplers)
        uniforms = uniform_draws(rows, self.groups, generators, first.device)
        width = choices.width
        if width is None:  # rows of different widths: each group of them chooses apart
            return self._frame_by_width(hidden, first, uniforms, choices)
        made = None
        if self.graph is not None and width == self.choices.narrow:  # the graph is for that width
            made = self.graph.attempt(hidden, first, uniforms, choices.tensors())
        if made is not None:
            return made
        return self.frame(
            hidden, first, uniforms, *choices.tensors(), width=width, sampled=choices.sampled, nucleus=choices.nucleus
        )

    def _frame_by_width(self, hidden, first, uniforms, choices):
        """Each width's rows as a frame of their own (rare: a request asked for a wider
        top-k than the model's); the results put back in row order."""
        codes = torch.empty((first.shape[0], self.groups + 1), dtype=torch.long, device=first.device)
        embeds = hidden.new_empty((first.shape[0], self.groups + 1, hidden.shape[-1]))
        finite = torch.empty(first.shape[0], dtype=torch.bool, device=first.device)
        for width, picked, some in choices.by_width():
            rows = hidden[picked], first[picked], uniforms[picked]
            made = self.frame(*rows, *some.tensors(), width=width, sampled=choices.sampled, nucleus=choices.nucleus)
            codes[picked], embeds[picked], finite[picked] = made
        return codes, embeds, finite

    def frame(
        self,
        hidden: torch.Tensor,
        first: torch.Tensor,
        uniforms: torch.Tensor,
        *choices: torch.Tensor,
        width: int,
        sampled: bool = True,
        nucleus: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole frame as tensors in, tensors out: what ``fill`` returns, given each
        row's draws (B, 15), its ``RowChoices`` tensors, and their common width (``sampled``,
        ``nucleus``: ``choose_among_best``'s shortcuts; the compiled frame takes neither)."""
        cache, stack = FrameKeys(len(self.stack.layers)), self.stack
        first_embed = self.first_embedding(first.view(-1, 1))
        embeds, codes = [first_embed], [first.view(-1)]
        step_input = torch.cat([hidden, first_embed], dim=1)
        finite = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)
        start = 0
        for group in range(self.groups):
            end = start + step_input.shape[1]
            rotary = stack.cos[None, None, start:end], stack.sin[None, None, start:end]
            out = stack.forward(self.project(step_input), rotary, cache, mask=None)
            head = self.heads[group]
            logits = per_row(out[:, -1], head.weight, head.bias).float()
            finite = finite & torch.isfinite(logits).all(dim=-1)
            uniform = uniforms[:, group : group + 1]
            code = choose_among_best(logits, choices, uniform, width, sampled, nucleus)
            codes.append(code)
            step_input = self.embeddings[group](code.view(-1, 1))
            embeds.append(step_input)
            start = end
        return torch.stack(codes, dim=1), torch.cat(embeds, dim=1), finite
