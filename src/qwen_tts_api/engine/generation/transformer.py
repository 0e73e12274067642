"""A compact forward for the talker and code-predictor transformers, over the package's own
weights (no copies), writing into caches that callers preallocate.

Per step it runs the same arithmetic as the package's Hugging Face modules, in the same
order (RMSNorm in float32, per-head q/k norms, rotary embedding, SDPA with grouped-query
attention), so greedy decoding gives the package's codes. What it leaves out is the
plumbing: no cache objects, no mask builders, no rotary tables rebuilt per call, no
module-call machinery per layer. Rotary tables are computed once for the positions a
cache can hold.

Both transformers only ever see text-like positions (the talker's three multimodal
position components are always equal), so the talker's interleaved multimodal rotary
embedding reduces to the plain one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..models.quantize import Int8Linear, Int8Part
from .kv_cache import KVWriter

Linear = Callable[[torch.Tensor], torch.Tensor]
# The package's transformer modules: attributes that torch's stubs cannot see (layers, self_attn...).
PackageModule = Any


def plain(layer: PackageModule) -> Linear:
    """A linear layer's own weight, called without the module machinery (int8 layers: their
    forward, without the module call's hooks; other layers as they are)."""
    if type(layer) in (Int8Linear, Int8Part):
        return layer.forward
    if type(layer) is not torch.nn.Linear:
        return layer
    weight, bias = layer.weight, layer.bias
    return lambda x: F.linear(x, weight, bias)


def per_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` over the rows of ``x`` (B, D), each row through the same matrix-vector
    product whatever B is (one batched call), so a row's result never depends on its
    neighbours: BLAS rounds a row differently by how many rows it gets, which let a seeded
    request's tokens change with the batch. For one row it is ``F.linear``'s own result; its
    cost is in docs/BENCHMARKS.md ("output heads row by row")."""
    out = torch.bmm(x.unsqueeze(1), weight.t().unsqueeze(0).expand(x.shape[0], -1, -1)).squeeze(1)
    return out if bias is None else out + bias


def join_weights(*layers: PackageModule) -> Linear:
    """One call for several projections of the same input, their outputs side by side.

    Bias-free layers become one matrix product: float weights are concatenated and each
    module is re-pointed, in place, at its slice of the result, so the package's modules
    (still used for prefill) and this path share one copy; int8 layers are joined when
    quantised (``quantize.Int8Part``). Weights already joined are used as they are. Others
    are called one after another. ``DecoderStack`` does this once per
    model, when the engine builds the model's ``StepParts``."""
    if all(type(layer) in (Int8Linear, Int8Part) and layer.bias is None for layer in layers):
        return Int8Linear.joined(list(layers)).forward
    if not all(type(layer) is torch.nn.Linear and layer.bias is None for layer in layers):
        return lambda x: torch.cat([layer(x) for layer in layers], dim=-1)
    weights = [layer.weight for layer in layers]
    base = weights[0]._base
    if base is None or any(w._base is not base for w in weights) or base.shape[0] != sum(w.shape[0] for w in weights):
        base = torch.cat([w.detach() for w in weights])
        offset = 0
        for layer in layers:
            rows = layer.weight.shape[0]
            layer.weight = torch.nn.Parameter(base[offset : offset + rows], requires_grad=False)
            offset += rows
    return lambda x: F.linear(x, base)


@dataclass(frozen=True)
class LayerWeights:
    input_norm: torch.Tensor
    qkv: Linear
    qk_norm: torch.Tensor  # (query heads + key heads, head_dim): each head's norm weight
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear
    down: Linear

    @classmethod
    def of(cls, layer: PackageModule, heads: int, kv_heads: int) -> LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        return cls(
            input_norm=layer.input_layernorm.weight,
            qkv=join_weights(attn.q_proj, attn.k_proj, attn.v_proj),
            qk_norm=torch.cat([attn.q_norm.weight.expand(heads, -1), attn.k_norm.weight.expand(kv_heads, -1)]),
            o=plain(attn.o_proj),
            post_norm=layer.post_attention_layernorm.weight,
            gate_up=join_weights(mlp.gate_proj, mlp.up_proj),
            down=plain(mlp.down_proj),
        )


class DecoderStack:
    """The decoder layers and final norm of one of the package's transformer models
    (``Qwen3TTSTalkerModel`` or ``Qwen3TTSTalkerCodePredictorModel``)."""

    def __init__(self, model: PackageModule):
        config = model.config
        self.eps = config.rms_norm_eps
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.intermediate = config.intermediate_size
        self.layers = [LayerWeights.of(layer, self.heads, self.kv_heads) for layer in model.layers]
        self.final_norm = model.norm.weight
        self.scaling = self.head_dim**-0.5
        self.dtype = self.final_norm.dtype
        self.device = self.final_norm.device
        self._inv_freq = model.rotary_emb.inv_freq.float()
        self._attention_scaling = model.rotary_emb.attention_scaling
        self.cos = self.sin = torch.empty(0)

    def ensure_positions(self, count: int) -> None:
        """Rotary tables for positions 0..count-1 (float32 arithmetic, as the package does)."""
        if self.cos.shape[0] >= count:
            return
        count = max(count, 2 * self.cos.shape[0])
        positions = torch.arange(count, device=self.device, dtype=torch.float32)
        freqs = torch.outer(positions, self._inv_freq.to(self.device))
        angles = torch.cat((freqs, freqs), dim=-1)
        self.cos = (angles.cos() * self._attention_scaling).to(self.dtype)
        self.sin = (angles.sin() * self._attention_scaling).to(self.dtype)

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) -> cos, sin (B, 1, T, head_dim)."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    def forward(
        self,
        hidden: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        cache: KVWriter,
        mask: torch.Tensor | None,
        last_only: bool = True,
    ) -> torch.Tensor:
        """hidden (B, T, D) -> final-normed hidden states (B, 1, D) of the last position
        (or all T). ``mask`` (B, 1, T, L) bool, or None: causal over equal-length rows."""
        batch, length, _ = hidden.shape
        cos, sin = rotary
        causal = mask is None and length > 1
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        for index, layer in enumerate(self.layers):
            residual = hidden
            x = rms_norm(hidden, layer.input_norm, self.eps)
            qkv = layer.qkv(x).view(batch, length, heads + 2 * kv_heads, head_dim)
            # Queries and keys are normed per head and rotated together: one call each.
            qk = _rotate(rms_norm(qkv[:, :, : heads + kv_heads], layer.qk_norm, self.eps).transpose(1, 2), cos, sin)
            q, k = qk[:, :heads], qk[:, heads:]
            v = qkv[:, :, heads + kv_heads :].transpose(1, 2)
            keys, values = cache.write(index, k, v)
            attended = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, is_causal=causal, scale=self.scaling, enable_gqa=True
            )
            hidden = residual + layer.o(attended.transpose(1, 2).reshape(batch, length, -1))
            residual = hidden
            gate, up = layer.gate_up(rms_norm(hidden, layer.post_norm, self.eps)).split(self.intermediate, dim=-1)
            hidden = residual + layer.down(F.silu(gate) * up)
        if last_only:
            hidden = hidden[:, -1:]
        return rms_norm(hidden, self.final_norm, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The package's RMSNorm over the last axis: normalised in float32, cast back, then
    scaled (``weight`` broadcasts: per head for the joint query/key norm)."""
    x32 = x.to(torch.float32)
    normalised = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normalised.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
