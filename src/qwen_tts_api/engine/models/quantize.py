"""``QWEN_TTS_QUANTIZE=int8``: int8 weight-only linears for the talker and code predictor.

Each output channel's weights are scaled into int8 symmetrically (one bfloat16 scale per
channel); the product runs in PyTorch's own int8 weight-only kernel
(``torch._weight_int8pack_mm``, bfloat16 activations). At one or a few rows the
autoregressive steps read every weight once per pass, so a quarter of float32's bytes is
most of the gain. The codec decoder is left alone (its SnakeBeta path is reported to break
under quantisation), as are the output heads and embeddings: logits keep the model dtype.
"""

from __future__ import annotations

from typing import Any

import torch


class Int8Linear(torch.nn.Module):
    weight_int8: torch.Tensor  # (out, in) int8
    scale: torch.Tensor  # (out,) bfloat16

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight_int8", weight)  # (out, in) int8
        self.register_buffer("scale", scale)  # (out,) bfloat16
        self.bias = bias

    @classmethod
    def of(cls, linear: torch.nn.Linear) -> Int8Linear:
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(quantized, scale.to(torch.bfloat16), bias)

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
            return cls(base, scale_base)
        weight = torch.cat([layer.weight_int8 for layer in layers])
        scale = torch.cat([layer.scale for layer in layers])
        offset = 0
        for layer in layers:
            rows = layer.weight_int8.shape[0]
            layer.weight_int8, layer.scale = weight[offset : offset + rows], scale[offset : offset + rows]
            offset += rows
        return cls(weight, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale)
        out = out.to(x.dtype).view(*x.shape[:-1], out.shape[-1])
        return out if self.bias is None else out + self.bias


def quantize_int8(talker: Any) -> int:
    """Replace the linears inside the talker's and code predictor's decoder layers;
    returns how many were replaced."""
    replaced = 0
    for stack in (talker.model.layers, talker.code_predictor.model.layers):
        for layer in stack:
            for block in (layer.self_attn, layer.mlp):
                for name, child in list(block.named_children()):
                    if type(child) is torch.nn.Linear:
                        setattr(block, name, Int8Linear.of(child))
                        replaced += 1
    return replaced
