"""``QWEN_TTS_QUANTIZE``: int8 weights for the talker's and code predictor's linears.

Each output channel's weights are scaled into int8 symmetrically (one scale per channel).
Two kernels multiply by them:

- ``int8`` (dynamic): the activations are quantised too and fbgemm multiplies int8 by int8
  (``torch.ops.quantized.linear_dynamic``), which reads the weights at close to memory speed
  and costs nearly the same for 1 to 8 rows. fbgemm takes one activation scale for the whole
  input, which would make a row's result depend on its batch neighbours; so every row is
  first divided by its own largest magnitude and two constant columns (+1 and -1, against
  zero weights) pin the input's range to [-1, 1]. The scale is then the same for every
  input, each row is quantised on its own (one scale per row), and the integer product is
  exact: a row's output never depends on the others in its batch.
- ``int8-weight-only``: PyTorch's weight-only kernel (``torch._weight_int8pack_mm``,
  bfloat16 activations): closer to bfloat16, about half as fast on a CPU.

At one or a few rows the autoregressive steps read every weight once per pass, so a quarter
of float32's bytes is most of the gain. The codec decoder is left alone (its SnakeBeta path
is reported to break under quantisation), as are the output heads and embeddings: logits
keep the model dtype.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any, Literal

import torch

Kernel = Literal["dynamic", "weight-only"]
QUANTIZE_MODES: dict[str, Kernel] = {"int8": "dynamic", "int8-weight-only": "weight-only"}
MAX_KEPT_ROWS = 16  # input buffers kept per layer: one per batch size up to this many rows


def dynamic_kernel_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


# A compiled graph cannot hold fbgemm's packed weights (a TorchScript object), so under
# torch.compile the dynamic kernel is an opaque operator that names its layer by a number.
# The graph calls it back in Python once per linear (about 400 times a frame at the 0.6B
# size), so it is defined with the plain operator library: ``torch.library.custom_op``'s
# wrapper (dynamo guard, aliasing check) made each call from a compiled graph 29 us instead
# of 25 us on a tiny layer (docs/BENCHMARKS.md).
_COMPILED_LAYERS: weakref.WeakValueDictionary[int, Int8Linear] = weakref.WeakValueDictionary()
_HANDLES = itertools.count()
_LIBRARY = torch.library.Library("qwen_tts_api", "DEF")
_LIBRARY.define("int8_dynamic_linear(Tensor pinned, int handle, int out_features) -> Tensor")


def _int8_dynamic_linear(pinned: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic(pinned, _COMPILED_LAYERS[handle].packed(), True)


_LIBRARY.impl("int8_dynamic_linear", _int8_dynamic_linear, "CPU")


@torch.library.register_fake("qwen_tts_api::int8_dynamic_linear")
def _(pinned: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return pinned.new_empty(pinned.shape[0], out_features)


class Int8Linear(torch.nn.Module):
    weight_int8: torch.Tensor  # (out, in) int8
    scale: torch.Tensor  # (out,) bfloat16

    def __init__(
        self,
        weight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        kernel: Kernel = "weight-only",
    ):
        super().__init__()
        self.register_buffer("weight_int8", weight)  # (out, in) int8
        self.register_buffer("scale", scale)  # (out,) bfloat16
        self.bias = bias
        self.kernel: Kernel = kernel
        self._packed: Any = None  # fbgemm's packed weights (dynamic kernel), made on first use
        self._pinned: dict[int, torch.Tensor] = {}  # per batch size: the input buffer, its last columns +1, -1
        self._handle: int | None = None  # its number for compiled graphs (``compilable``)

    @classmethod
    def of(cls, linear: torch.nn.Linear, kernel: Kernel = "weight-only") -> Int8Linear:
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(quantized, scale.to(torch.bfloat16), bias, kernel)

    @classmethod
    def joined(cls, layers: list[Int8Linear]) -> Int8Linear:
        """One layer for several bias-free ones over the same input; each keeps a view of
        the joined buffers (one copy in memory). Layers joined before are used as they are."""
        base, scale_base = layers[0].weight_int8._base, layers[0].scale._base
        if (
            base is not None
            and scale_base is not None
            and all(layer.weight_int8._base is base and layer.scale._base is scale_base for layer in layers)
            and base.shape[0] == sum(layer.weight_int8.shape[0] for layer in layers)
        ):
            return cls(base, scale_base, kernel=layers[0].kernel)
        weight = torch.cat([layer.weight_int8 for layer in layers])
        scale = torch.cat([layer.scale for layer in layers])
        offset = 0
        for layer in layers:
            rows = layer.weight_int8.shape[0]
            layer.weight_int8, layer.scale = weight[offset : offset + rows], scale[offset : offset + rows]
            offset += rows
        return cls(weight, scale, kernel=layers[0].kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "dynamic":
            return self._dynamic(x)
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale)
        return self._shaped(out, x)

    def packed(self) -> Any:
        if self._packed is None:
            self._packed = self._pack()
        return self._packed

    def compilable(self) -> None:
        """Ready the layer to be traced by torch.compile: weights packed and a number given."""
        if self.kernel == "dynamic" and self._handle is None:
            self.packed()
            self._handle = next(_HANDLES)
            _COMPILED_LAYERS[self._handle] = self

    def _pack(self) -> Any:
        """fbgemm's packed weights, with two zero columns for the range-pinning inputs."""
        weight = torch.cat([self.weight_int8, self.weight_int8.new_zeros(self.weight_int8.shape[0], 2)], dim=1)
        scales = self.scale.double()
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        quantized = torch._make_per_channel_quantized_tensor(weight, scales, zero_points, 0)
        return torch.ops.quantized.linear_prepack(quantized, None)

    def _input(self, count: int, width: int) -> torch.Tensor:
        """A (count, width + 2) buffer whose last two columns are +1 and -1. The steps' few
        batch sizes keep theirs; a prompt's rows (prefill) get a new one each time."""
        buffer = self._pinned.get(count)
        if buffer is None:
            buffer = torch.empty(count, width + 2)
            buffer[:, width], buffer[:, width + 1] = 1.0, -1.0
            if count <= MAX_KEPT_ROWS:
                self._pinned[count] = buffer
        return buffer

    def _dynamic(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._dynamic_traced(x)
        packed = self.packed()
        width = x.shape[-1]
        rows = x.reshape(-1, width).float()
        peak = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)
        pinned = self._input(rows.shape[0], width)
        torch.div(rows, peak, out=pinned[:, :width])  # every row, and so the input, spans [-1, 1]
        # reduce_range: 7-bit activations, so that AVX2's int16 pair sums cannot saturate.
        out = torch.ops.quantized.linear_dynamic(pinned, packed, True).mul_(peak)
        return self._shaped(out, x)

    def _dynamic_traced(self, x: torch.Tensor) -> torch.Tensor:
        """The same arithmetic as ``_dynamic`` in operators a graph can hold (no buffers
        reused in place); the compiler fuses the scaling around the opaque product."""
        assert self._handle is not None, "call compilable() before tracing an int8 layer"
        width, out_features = x.shape[-1], self.weight_int8.shape[0]
        rows = x.reshape(-1, width).float()
        peak = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
        pins = torch.tensor([1.0, -1.0], device=rows.device).expand(rows.shape[0], 2)
        pinned = torch.cat([rows / peak, pins], dim=1)
        out = torch.ops.qwen_tts_api.int8_dynamic_linear(pinned, self._handle, out_features) * peak
        return self._shaped(out, x)

    def _shaped(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A product over ``x``'s rows (2-D) back in ``x``'s dtype and leading shape, plus the bias."""
        out = out.to(x.dtype).view(*x.shape[:-1], out.shape[-1])
        return out if self.bias is None else out + self.bias


def quantize_int8(talker: Any, kernel: Kernel = "weight-only") -> int:
    """Replace the linears inside the talker's and code predictor's decoder layers;
    returns how many were replaced."""
    if kernel == "dynamic":
        torch.backends.quantized.engine = "fbgemm"  # the kernel the packed weights are made for
    replaced = 0
    for stack in (talker.model.layers, talker.code_predictor.model.layers):
        for layer in stack:
            for block in (layer.self_attn, layer.mlp):
                for name, child in list(block.named_children()):
                    if type(child) is torch.nn.Linear:
                        setattr(block, name, Int8Linear.of(child, kernel))
                        replaced += 1
    return replaced
