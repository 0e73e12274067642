"""``QWEN_TTS_QUANTIZE``: int8 weights for the talker's and code predictor's linears.

Each output channel's weights are scaled into int8 symmetrically (one scale per channel).
Projections of the same input (q, k and v; gate and up) become one layer, so that a step
makes one product of them; the package's own modules (prefill) call it through ``Int8Part``s,
which take their columns of that one product. Each weight so exists once, in the form its
kernel reads. Two kernels multiply by them:

- ``int8`` (dynamic): the activations are quantised too and fbgemm multiplies int8 by int8,
  which reads the weights at close to memory speed and costs nearly the same for 1 to 8
  rows. fbgemm's dynamic quantisation takes one activation scale for the whole input, which
  would make a row's result depend on its batch neighbours; so every row is first divided by
  its own largest magnitude, and the product is taken with the fixed scale and zero point
  that range [-1, 1] gets (7-bit, so that AVX2's int16 pair sums cannot saturate); the row
  is multiplied back after. A row's output never depends on the others in its batch. Only
  fbgemm's packed copy of the weights is kept (``linear_unpack`` gives them back).
- ``int8-weight-only``: PyTorch's weight-only kernel (``torch._weight_int8pack_mm``,
  bfloat16 activations): closer to bfloat16, about half as fast on a CPU.

At one or a few rows the autoregressive steps read every weight once per pass, so a quarter
of float32's bytes is most of the gain. The codec decoder is left alone (its SnakeBeta path
is reported to break under quantisation), as are the output heads and embeddings: logits
keep the model dtype.
"""

from __future__ import annotations

import itertools
import os
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import torch

Kernel = Literal["dynamic", "weight-only"]
QUANTIZE_MODES: dict[str, Kernel] = {"int8": "dynamic", "int8-weight-only": "weight-only"}
# The activations' fixed quantisation: rows scaled into [-1, 1] as unsigned 7-bit values,
# what fbgemm's dynamic quantisation (reduce_range) chooses for that range.
ROW_SCALE = 2 / 127
ROW_ZERO_POINT = 64


def dynamic_kernel_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def _fixed_scale_product(rows: torch.Tensor, packed: Any) -> torch.Tensor:
    """fbgemm's int8 product of ``rows`` (each within [-1, 1]) quantised at the fixed scale."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(rows, ROW_SCALE, ROW_ZERO_POINT, packed)


# A compiled graph cannot hold fbgemm's packed weights (a TorchScript object), so under
# torch.compile the dynamic kernel is an opaque operator that names its layer by a number.
# The graph calls it back in Python once per linear (about 400 times a frame at the 0.6B
# size), so it is defined with the plain operator library: ``torch.library.custom_op``'s
# wrapper (dynamo guard, aliasing check) made each call from a compiled graph 29 us instead
# of 25 us on a tiny layer (docs/BENCHMARKS.md).
_COMPILED_LAYERS: weakref.WeakValueDictionary[int, Int8Linear] = weakref.WeakValueDictionary()
_HANDLES = itertools.count()
_LIBRARY = torch.library.Library("qwen_tts_api", "DEF")
_LIBRARY.define("int8_dynamic_linear(Tensor rows, int handle, int out_features) -> Tensor")


def _int8_dynamic_linear(rows: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return _fixed_scale_product(rows, _COMPILED_LAYERS[handle].packed)


_LIBRARY.impl("int8_dynamic_linear", _int8_dynamic_linear, "CPU")


@torch.library.register_fake("qwen_tts_api::int8_dynamic_linear")
def _(rows: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return rows.new_empty(rows.shape[0], out_features)


def _quantized(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 weight, bfloat16 scale per output channel)`` of a float weight."""
    scale = weight.detach().abs().amax(dim=1).float().clamp(min=1e-12) / 127  # |w| and its max exact in any dtype
    rows = weight.detach().to(torch.float32, copy=True)  # a copy to work in: the same arithmetic, no temporaries
    return rows.div_(scale[:, None]).round_().clamp_(-127, 127).to(torch.int8), scale.to(torch.bfloat16)


class Int8Linear(torch.nn.Module):
    weight_int8: torch.Tensor  # (out, in) int8: the weight-only kernel's form
    scale: torch.Tensor  # (out,) bfloat16

    def __init__(
        self,
        weight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        kernel: Kernel = "weight-only",
    ):
        """``weight``: (out, in) int8; ``scale``: (out,) bfloat16. The dynamic kernel keeps only
        fbgemm's packing of them; the weight-only kernel keeps them as they are."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.kernel: Kernel = kernel
        self.packed: Any = None  # fbgemm's packed weights (dynamic kernel)
        if kernel == "dynamic":
            torch.backends.quantized.engine = "fbgemm"  # the kernel the packed weights are made for
            zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
            per_channel = torch._make_per_channel_quantized_tensor(weight, scale.double(), zero_points, 0)
            self.packed = torch.ops.quantized.linear_prepack(per_channel, None)
        else:
            self.register_buffer("weight_int8", weight)
            self.register_buffer("scale", scale)
        self._handle: int | None = None  # its number for compiled graphs (``compilable``)
        self._shared: tuple[torch.Tensor, torch.Tensor, int] | None = None  # for parts: input, product, takers left

    @classmethod
    def of(cls, linears: torch.nn.Linear | Sequence[torch.nn.Linear], kernel: Kernel = "weight-only") -> Int8Linear:
        """One int8 layer for a linear, or for several bias-free ones over the same input (their
        outputs side by side)."""
        if isinstance(linears, torch.nn.Linear):
            weight, scale = _quantized(linears.weight)
            bias = None if linears.bias is None else linears.bias.detach()
            return cls(weight, scale, bias, kernel)
        assert all(linear.bias is None for linear in linears), "only bias-free layers are joined"
        quantized = [_quantized(linear.weight) for linear in linears]  # per channel: the same as each alone
        return cls(torch.cat([w for w, _ in quantized]), torch.cat([s for _, s in quantized]), kernel=kernel)

    @classmethod
    def joined(cls, layers: Sequence[Int8Linear | Int8Part]) -> Int8Linear:
        """One layer for several bias-free ones over the same input: the parts of one layer,
        in order, are that layer; separate layers are joined into a new one."""
        first = layers[0]
        if isinstance(first, Int8Part) and Int8Part.cover(layers):
            return first.whole
        weights = [layer.int8_weight() for layer in layers]
        return cls(torch.cat([w for w, _ in weights]), torch.cat([s for _, s in weights]), kernel=first.kernel)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(int8 weight, bfloat16 scale)``, unpacked from fbgemm's copy for the dynamic kernel."""
        if self.kernel != "dynamic":
            return self.weight_int8, self.scale
        quantized, _ = torch.ops.quantized.linear_unpack(self.packed)
        return quantized.int_repr(), quantized.q_per_channel_scales().to(torch.bfloat16)

    def parts(self, widths: Sequence[int]) -> list[Int8Part]:
        """Modules for consecutive column ranges of this layer's output, which share one product."""
        assert sum(widths) == self.out_features
        starts = list(itertools.accumulate(widths, initial=0))
        return [Int8Part(self, start, end, len(widths)) for start, end in itertools.pairwise(starts)]

    def shared_product(self, x: torch.Tensor, takers: int) -> torch.Tensor:
        """This layer's output for ``x``, computed once for ``takers`` parts that ask in turn
        for the same input (the package's attention: q, k, v of one hidden state)."""
        if self._shared is not None and self._shared[0] is x:
            _, out, left = self._shared
            self._shared = (x, out, left - 1) if left > 1 else None
            return out
        out = self(x)
        self._shared = (x, out, takers - 1) if takers > 1 else None
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "dynamic":
            return self._dynamic(x)
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale)
        return self._shaped(out, x)

    def compilable(self) -> None:
        """Ready the layer to be traced by torch.compile: given a number."""
        if self.kernel == "dynamic" and self._handle is None:
            self._handle = next(_HANDLES)
            _COMPILED_LAYERS[self._handle] = self

    def _dynamic(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        peak = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
        if torch.compiler.is_compiling():
            # The same arithmetic in operators a graph can hold: the compiler fuses the
            # scaling around the opaque product.
            assert self._handle is not None, "call compilable() before tracing an int8 layer"
            out = torch.ops.qwen_tts_api.int8_dynamic_linear(rows / peak, self._handle, self.out_features) * peak
        else:
            out = _fixed_scale_product(rows / peak, self.packed).mul_(peak)
        return self._shaped(out, x)

    def _shaped(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A product over ``x``'s rows (2-D) back in ``x``'s dtype and leading shape, plus the bias."""
        out = out.to(x.dtype).view(*x.shape[:-1], out.shape[-1])
        return out if self.bias is None else out + self.bias


class Int8Part(torch.nn.Module):
    """Columns ``start:end`` of a joined ``Int8Linear``'s output: where the package's module
    for one projection was (q_proj, gate_proj...)."""

    bias = None

    def __init__(self, whole: Int8Linear, start: int, end: int, takers: int):
        super().__init__()
        self.whole, self.start, self.end, self.takers = whole, start, end, takers
        self.kernel = whole.kernel

    @staticmethod
    def cover(layers: Sequence[Int8Linear | Int8Part]) -> bool:
        """Whether ``layers`` are all the parts of one layer, in order."""
        whole = getattr(layers[0], "whole", None)
        ends = [0, *(getattr(layer, "end", -1) for layer in layers)]
        return (
            whole is not None
            and all(getattr(layer, "whole", None) is whole and layer.start == end for layer, end in zip(layers, ends))
            and ends[-1] == whole.out_features
        )

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight, scale = self.whole.int8_weight()
        return weight[self.start : self.end], scale[self.start : self.end]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.whole.shared_product(x, self.takers)[..., self.start : self.end]


Release = Callable[[torch.Tensor], None]  # told of each float weight once its int8 form is made


def _int8_of(linears: list[torch.nn.Linear], kernel: Kernel) -> list[Int8Linear | Int8Part]:
    """The int8 modules for linears over the same input: parts of one layer, or each alone
    where they cannot be joined."""
    if len(linears) > 1 and all(linear.bias is None for linear in linears):
        return list(Int8Linear.of(linears, kernel).parts([linear.out_features for linear in linears]))
    return [Int8Linear.of(linear, kernel) for linear in linears]


JOINED = {"self_attn": (("q_proj", "k_proj", "v_proj"), ("o_proj",)), "mlp": (("gate_proj", "up_proj"), ("down_proj",))}
# Layers quantised and packed at once at start-up (fbgemm packs on one thread).
QUANTIZING_THREADS = 2


def quantize_int8(talker: Any, kernel: Kernel = "weight-only", release: Release | None = None) -> int:
    """Replace the linears inside the talker's and code predictor's decoder layers, a few at
    a time on as many threads (each float weight is freed, and ``release``d, as its int8 form
    takes its place); returns how many were replaced."""
    groups = [
        (block, names, [getattr(block, name) for name in names])
        for stack in (talker.model.layers, talker.code_predictor.model.layers)
        for layer in stack
        for block_name, block_groups in JOINED.items()
        for block in (getattr(layer, block_name),)
        for names in block_groups
    ]
    groups = [group for group in groups if all(type(linear) is torch.nn.Linear for linear in group[2])]
    threads = max(1, min(QUANTIZING_THREADS, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads, thread_name_prefix="quantize") as pool:
        made = pool.map(lambda group: _int8_of(group[2], kernel), groups)
        for (block, names, linears), modules in zip(groups, made):
            for name, module in zip(names, modules):
                setattr(block, name, module)
            if release is not None:
                for linear in linears:
                    release(linear.weight)
    return sum(len(linears) for _, _, linears in groups)
