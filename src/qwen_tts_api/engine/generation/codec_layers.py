"""The codec decoder's layers, run incrementally on a one-row image.

The decoder is causal all the way through: stride-1 convolutions padded on the left,
transposed convolutions whose outputs overlap only their neighbour. So each layer keeps the
left context it needs between chunks (``LayerStates``) instead of decoding earlier frames
again. For speed on a CPU the signal is held as a one-row image in channels-last memory
(oneDNN's NHWC convolutions), transposed convolutions are matrix products, and SnakeBeta
runs in place; on a GPU the image stays in the usual memory format, as cuDNN prefers
(docs/BENCHMARKS.md, "The codec on a CPU" and the H200 run).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..models.compact import MappedFiles

KEPT = "_qwen_tts_api_"  # what this project keeps on a codec's modules starts so (``forget_kept_weights``)
MATRIX = KEPT + "transposed_rows"  # a transposed convolution's weight as a matrix (see _overlap_add)
IMAGE = KEPT + "image"  # a convolution's weight as a one-row image's, in the device's memory format


class LayerStates:
    """Left context per convolution module, created as zeros (the original zero padding).

    Below the transformer the decoder's tensors are (B, C, 1, L): a 1-D signal as a one-row
    image, on a CPU in channels-last memory, so that oneDNN runs the convolutions in its NHWC
    kernels, which there are up to twice as fast as its 1-D ones where channels are few and
    the signal long (the last blocks, at 24 kHz); elsewhere in the usual memory format
    (``memory_format``)."""

    def __init__(self) -> None:
        self.tails: dict[int, torch.Tensor] = {}

    def conv(self, module, x: torch.Tensor) -> torch.Tensor:
        """A stride-1 causal convolution (``Qwen3TTSTokenizerV2CausalConvNet``) of (B, C, 1, L)."""
        conv = module.conv
        need = module.kernel_size - 1  # the module's own left padding
        if need:
            x = self._joined(module, x, need)
        weight = _kept(
            conv, IMAGE, lambda: image(conv.weight.detach()), lambda kept: kept.squeeze(2)
        )  # (out, in, 1, k)
        return F.conv2d(x, weight, conv.bias, dilation=(1, conv.dilation[0]), groups=conv.groups)

    def transposed(self, module, x: torch.Tensor) -> torch.Tensor:
        """A causal transposed convolution of (B, C, 1, L) whose kernel is its stride (no
        overlap) or twice it (an input's outputs overlap the next input's), as all of the
        codec's are."""
        conv = module.conv
        stride, kernel = conv.stride[0], conv.kernel_size[0]
        if kernel not in (stride, 2 * stride) or conv.padding[0] or conv.groups != 1:
            raise ValueError(f"unsupported transposed convolution in the codec: {conv}")
        return _overlap_add(conv, x if kernel == stride else self._joined(module, x, 1))

    def _joined(self, module, x: torch.Tensor, keep: int) -> torch.Tensor:
        """``x`` after the module's left context (zeros at first); keeps its last ``keep`` inputs."""
        tail = self.tails.get(id(module))
        if tail is None:
            tail = x.new_zeros(x.shape[0], x.shape[1], 1, keep).contiguous(memory_format=memory_format(x))
        # In the device's memory format whatever cat chose (a one-position tail fits either, and
        # then the rows of a transposed convolution's product would lie differently alone and in a batch).
        joined = torch.cat([tail, x], dim=-1).contiguous(memory_format=memory_format(x))
        self.tails[id(module)] = joined[..., -keep:].clone()  # a view would hold all of x between chunks
        return joined


def _kept(
    conv, name: str, make: Callable[[], torch.Tensor], original: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """A weight in the layout this decoder needs: made once per model, kept on the module.
    The module's own weight then becomes a view of it (``original``: the view in the module's
    shape), so the codec's weights stay in memory once, not once per layout."""
    weight = getattr(conv, name, None)
    if weight is None:
        weight = make()
        setattr(conv, name, weight)
        view, replaced = original(weight), conv.weight.detach()
        if view.shape == replaced.shape and view.dtype == replaced.dtype and view.data_ptr() != replaced.data_ptr():
            conv.weight.data = view
            MappedFiles().release(replaced)  # the checkpoint's pages it was read from, if mapped
    return weight


def forget_kept_weights(decoder: torch.nn.Module) -> None:
    """Drop the weight layouts kept on ``decoder``'s modules (made again at next use), and
    what ``first_chunks.probe_first_chunks`` found: after its dtype or the memory format changes."""
    for module in decoder.modules():
        for name in [name for name in vars(module) if name.startswith(KEPT)]:
            delattr(module, name)


def _overlap_add(conv, joined: torch.Tensor) -> torch.Tensor:
    """A transposed convolution as one matrix product and, where the kernel is twice the
    stride, an overlap-add: each input frame makes two strides of output, the second of which
    lands on the next frame's first (the first frame of ``joined`` is the previous chunk's
    last, whose own output went out then). PyTorch runs ConvTranspose1d without oneDNN on a
    CPU; the product runs in BLAS. Same output, up to the order of float sums."""
    # (in, out, k) -> (in, k * out)
    channels_in, channels_out, kernel = conv.weight.shape
    weight = _kept(
        conv,
        MATRIX,
        lambda: conv.weight.detach().permute(0, 2, 1).reshape(channels_in, -1),
        lambda kept: kept.view(channels_in, kernel, channels_out).permute(0, 2, 1),
    )
    stride, batch, frames = conv.stride[0], joined.shape[0], joined.shape[-1]
    overlap = conv.kernel_size[0] // stride
    rows = joined.permute(0, 2, 3, 1).reshape(batch, frames, -1)  # (B, L, in): channels-last memory, no copy
    if joined.device.type == "cpu":
        # Each stream's rows in a product of their own, as when it is decoded alone: a product
        # of all streams' rows may round differently, and a batched matmul copies the weight
        # per stream. On a GPU (where batches round by shape anyway) one product: a launch per
        # stream would grow with the streams decoded together.
        products = [torch.matmul(rows[b : b + 1], weight) for b in range(batch)]
        product = products[0] if batch == 1 else torch.cat(products)
    else:
        product = torch.matmul(rows.reshape(batch * frames, -1), weight)
    spans = product.view(batch, frames, overlap, stride, -1)
    out = spans[:, :, 0] if overlap == 1 else spans[:, 1:, 0] + spans[:, :-1, 1]  # (B, L', s, out)
    if conv.bias is not None:
        out = out + conv.bias
    out = out.reshape(batch, -1, 1, out.shape[-1]).permute(0, 3, 2, 1)  # (B, out, 1, L * s), channels-last
    return out.contiguous(memory_format=memory_format(out))


def snake_beta(module, x: torch.Tensor) -> torch.Tensor:
    """The codec's SnakeBeta activation, x + sin²(αx) / β, as the package computes it but in
    place on one buffer: at 24 kHz its tensors are the decoder's largest, and the package's
    form makes five of them per call."""
    alpha = module.alpha.exp()[None, :, None, None]
    inverse_beta = 1.0 / (module.beta.exp() + module.no_div_by_zero)[None, :, None, None]
    out = x * alpha
    out.sin_()
    out.mul_(out).mul_(inverse_beta)
    return out.add_(x)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """How the decoder holds its one-row images on ``x``'s device: channels-last on a CPU
    (oneDNN's NHWC convolutions), the usual layout elsewhere (cuDNN's, as for the package)."""
    return torch.channels_last if x.device.type == "cpu" else torch.contiguous_format


def image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, L) -> (B, C, 1, L) in the device's memory format (on a CPU no copy when ``x`` is
    a transposed (B, L, C))."""
    return x.unsqueeze(2).contiguous(memory_format=memory_format(x))
