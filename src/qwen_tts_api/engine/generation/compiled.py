"""The talker step and the code predictor's frame as compiled graphs (``QWEN_TTS_COMPILE``).

``torch.compile(fullgraph=True)`` captures the talker step (``transformer.DecoderStack``'s forward:
every layer's norms, rotary embedding, attention, residuals, and the int8 row scaling around
fbgemm's product) as one graph, and a whole frame of the code predictor (its 15 passes, each
with its output head and token choice, ``code_predictor.CodePredictor.frame``) as another: a
frame then costs two graph calls instead of thousands of operator dispatches from Python, and
the compiler fuses the small element-wise work. On a CPU the graphs call their kernels from
generated C++ (inductor's ``cpp_wrapper``), not from Python.

Shapes must not change from step to step, or each step would compile anew: the talker's
attention spans the whole preallocated cache under a mask (``kv_cache.WholeCacheWriter``), and
the number of rows and the cache length are marked dynamic, so new batch sizes and a cache
that grows reuse the graph (one row is a shape of its own to the compiler: two graphs per
forward in all). Sampling parameters are tensors, so requests' own settings never compile
anything; the frame graph is for rows whose top-k is at most the model's (``sampling.
ChoiceTable``), which is every row unless a request asks for more. On a CPU the talker step
is compiled for one row only (``talker_graph_rows``); the talker's token choice stays eager.

On CUDA, ``mode="reduce-overhead"`` records CUDA graphs (``QWEN_TTS_CUDA_GRAPHS``); the caches
are then fixed addresses, recorded again when they are reallocated, and outputs are copied
out of the graphs' memory before the next replay.

A compiled forward that fails (no C++ compiler, a compiler error, a CUDA-graph limitation)
is logged once and the eager forward takes over for good: ``attempt`` returns None.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from ..models.quantize import Int8Linear
from .kv_cache import SlotCache, WholeCacheWriter
from .transformer import DecoderStack

StepState = Literal["eager", "compiled"]  # how a model's steps run (``/ready``)
CompileMode = str | None  # torch.compile's mode: None (default) or "reduce-overhead" (CUDA graphs)
# Graphs per forward: one row and many, two predictor input lengths, per model served (each
# model's forwards are the same code to the compiler); past the limit it would run eagerly.
RECOMPILE_LIMIT = 64
log = logging.getLogger(__name__)


def compile_choice(setting: str, cuda_graphs: str, device: torch.device) -> tuple[bool, CompileMode]:
    """``QWEN_TTS_COMPILE`` and ``QWEN_TTS_CUDA_GRAPHS`` on this device -> (compile?, mode).
    auto compiles on CUDA only: on a CPU the compiled step gains little for minutes of
    compiling (docs/BENCHMARKS.md)."""
    compiled = setting == "on" or (setting == "auto" and device.type == "cuda")
    graphs = compiled and device.type == "cuda" and cuda_graphs == "auto"
    return compiled, "reduce-overhead" if graphs else None


def talker_graph_rows(device: torch.device) -> int | None:
    """Up to how many rows the talker step runs compiled (None: any). On a CPU, one: the
    compiled talker attends over the whole preallocated cache under a mask, which at eight
    rows measured slower than the eager step attending over the positions in use
    (docs/BENCHMARKS.md); the code predictor, whose cache is 17 positions, gains at any size."""
    return None if device.type == "cuda" else 1


def keep_compiled_graphs_in(directory: Path | None) -> None:
    """Inductor's caches (compiled kernels, graphs) under ``directory``, unless the
    environment already names one: a restart then loads them instead of compiling again."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    if directory is None or "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    log.info("compiled graphs are cached in %s", directory)


def _compilable(stack: DecoderStack) -> None:
    """Every int8 layer the stack calls gets ready to be traced (``Int8Linear.compilable``)."""
    for layer in stack.layers:
        for name in ("qkv", "o", "gate_up", "down"):
            owner = getattr(getattr(layer, name), "__self__", None)
            if isinstance(owner, Int8Linear):
                owner.compilable()


def _mark(tensors: list[torch.Tensor], dims: tuple[int, ...], static_address: bool) -> None:
    """``dims`` vary from call to call (rows, cache length): one graph takes them all. A cache
    that CUDA graphs replay on is a fixed address as well (recorded again when it moves), and
    still dynamic: without that, a cache that grew or gained rows compiled the graphs again
    mid-request (tests/engine/generation/test_batching.py saw it on a CPU; docs/BENCHMARKS.md has the stall it
    caused on a GPU)."""
    for tensor in tensors:
        if static_address:
            torch._dynamo.mark_static_address(tensor)
        for dim in dims:
            torch._dynamo.maybe_mark_dynamic(tensor, dim)


class _CompiledForward:
    def __init__(self, stack: DecoderStack, mode: CompileMode):
        _compilable(stack)
        self.stack = stack
        self.cuda_graphs = mode == "reduce-overhead"
        self.broken = False  # set when the compiled forward failed: callers run eagerly
        # On a CPU the graph's kernels are called from generated C++ rather than Python: for a
        # small model that is most of a step (docs/BENCHMARKS.md). CUDA graphs replay without it.
        cpu = stack.device.type == "cpu"
        options = None if self.cuda_graphs else {"cpp_wrapper": cpu, "cpp_wrapper_build_separate": cpu}
        self._graph: Callable[..., Any] = torch.compile(self._forward, fullgraph=True, mode=mode, options=options)

    @property
    def state(self) -> StepState:
        """``eager`` once the compiled forward failed and the eager one took over."""
        return "eager" if self.broken else "compiled"

    def _forward(self, *args: Any) -> Any:
        raise NotImplementedError

    def _run(self, *args: Any) -> Any:
        if self.broken:
            return None
        try:
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = self._graph(*args)
        except Exception:  # noqa: BLE001 - contained: the eager forward computes the same
            log.exception("the compiled %s failed; it runs eagerly from now on", type(self).__name__)
            self.broken = True
            return None
        if not self.cuda_graphs:
            return out
        # The next replay overwrites a graph's outputs.
        return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()


class CompiledTalker(_CompiledForward):
    """One talker step for every row: ``(step input (B, 1, D), positions (B,), cache) -> final
    hidden states (B, 1, D)``, each row writing and attending over its own positions.
    ``max_rows``: larger batches step eagerly (``attempt`` returns None; None: any size)."""

    def __init__(
        self,
        stack: DecoderStack,
        choose_next: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        width: int,
        mode: CompileMode = None,
        max_rows: int | None = None,
    ):
        super().__init__(stack, mode)
        self.choose_next, self.width = choose_next, width
        self.max_rows = max_rows

    def _forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        *choice: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = hidden.shape[0]
        span = torch.arange(keys[0].shape[2], device=hidden.device)
        mask = (span[None, :] <= positions[:, None]).view(rows, 1, 1, -1)
        rotary = cos[positions].view(rows, 1, 1, -1), sin[positions].view(rows, 1, 1, -1)
        out = self.stack.forward(hidden, rotary, WholeCacheWriter(keys, values, positions[:, None]), mask)
        tokens, finite = self.choose_next(out[:, -1], *choice, width=self.width)
        return out, tokens, finite

    def takes(self, rows: int) -> bool:
        """Whether a batch of ``rows`` runs this graph (check before drawing its inputs)."""
        return not self.broken and (self.max_rows is None or rows <= self.max_rows)

    def attempt(
        self, hidden: torch.Tensor, positions: torch.Tensor, cache: SlotCache, choice: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """-> (final hidden states (B, 1, D), next token per row, whether its logits were finite);
        ``choice``: ``TalkerChoice.inputs`` (rows that all look at ``width`` tokens)."""
        stack, rows = self.stack, hidden.shape[0]
        if self.max_rows is not None and rows > self.max_rows:
            return None
        # The rows' slots only: one row is then one shape to the compiler, whatever the slots.
        keys, values = [k[:rows] for k in cache.keys], [v[:rows] for v in cache.values]
        _mark(keys + values, (0, 2), self.cuda_graphs)
        _mark([hidden, positions, *choice], (0,), False)
        _mark([stack.cos, stack.sin], (0,), False)
        return self._run(hidden, positions, stack.cos, stack.sin, keys, values, *choice)


class CompiledFrame(_CompiledForward):
    """A whole frame of the code predictor, its 15 passes and token choices, as one graph:
    ``code_predictor.CodePredictor.frame`` (tensors in, tensors out), for any number of rows and
    any sampling parameters (they are tensors too)."""

    def __init__(
        self, stack: DecoderStack, frame: Callable[..., tuple[torch.Tensor, ...]], width: int, mode: CompileMode = None
    ):
        self.frame, self.width = frame, width
        super().__init__(stack, mode)

    def _forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.frame(*inputs, width=self.width)

    def attempt(
        self, hidden: torch.Tensor, first: torch.Tensor, uniforms: torch.Tensor, choices: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...] | None:
        """``choices``: ``RowChoices.tensors()`` of rows that all look at ``width`` tokens."""
        inputs = [hidden, first, uniforms, *choices]
        _mark(inputs, (0,), False)
        return self._run(*inputs)
