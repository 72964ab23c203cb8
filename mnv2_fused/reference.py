"""The unfused block in plain PyTorch: BN folding, and the oracle every kernel is tested against."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn


class FoldedWeights(NamedTuple):
    """A block's weights with inference-mode BatchNorm folded into the convolutions.

    w_expand (hidden, Cin) and b_expand (hidden) are None for an expand_ratio == 1 block;
    w_dw is (hidden, 3, 3); w_proj is (Cout, hidden). The cached copies for the CPU kernel hold
    w_expand and w_proj packed (see layout.pack_columns); as_matrix reads either form.
    """

    w_expand: Optional[torch.Tensor]
    b_expand: Optional[torch.Tensor]
    w_dw: torch.Tensor
    b_dw: torch.Tensor
    w_proj: torch.Tensor
    b_proj: torch.Tensor


def as_matrix(w: torch.Tensor, o: int) -> torch.Tensor:
    """The (O, K) matrix of a weight given (O, K) or packed, (ceil(O/16), K, 16) (layout.pack_columns)."""
    if w.dim() == 2:
        return w
    return w.transpose(1, 2).reshape(-1, w.shape[1])[:o]


def unpacked(w: FoldedWeights) -> FoldedWeights:
    """w with its matrices (O, K), for back ends that do not read the packed form."""
    hidden = w.w_dw.shape[0]
    return w._replace(w_expand=None if w.w_expand is None else as_matrix(w.w_expand, hidden),
                      w_proj=as_matrix(w.w_proj, w.b_proj.shape[0]))


def fold_bn(conv_weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """scale = gamma / sqrt(var + eps); w' = w * scale; b' = beta - mean * scale (computed in fp32 or wider)."""
    dtype = torch.promote_types(conv_weight.dtype, torch.float32)
    var = bn.running_var.to(dtype)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(dtype)
    shift = -bn.running_mean.to(dtype) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(dtype)
    w = conv_weight.to(dtype) * scale.reshape(-1, *([1] * (conv_weight.dim() - 1)))
    return w.to(conv_weight.dtype), shift.to(conv_weight.dtype)


def fold_block(conv: nn.Sequential) -> FoldedWeights:
    """Fold the `conv` Sequential of a torchvision-layout InvertedResidual (with or without expand)."""
    if len(conv) == 4:
        expand, dw, proj, bn = conv[0], conv[1], conv[2], conv[3]
        w_e, b_e = fold_bn(expand[0].weight, expand[1])
        w_e = w_e.flatten(1)
    else:
        dw, proj, bn = conv[0], conv[1], conv[2]
        w_e = b_e = None
    w_d, b_d = fold_bn(dw[0].weight, dw[1])
    w_p, b_p = fold_bn(proj.weight, bn)
    parts = [w_e, b_e, w_d.reshape(-1, 3, 3), b_d, w_p.flatten(1), b_p]
    return FoldedWeights(*[None if p is None else p.detach().contiguous() for p in parts])


def conv_out(size: int, stride: int) -> int:
    """Output size of the block's convolutions: odd k x k with symmetric padding (k - 1) d / 2, or
    TensorFlow's "same" padding (csrc/layout.h has the same rule)."""
    return (size - 1) // stride + 1


def same_pad_before(size: int, stride: int, span: int) -> int:
    """TensorFlow's "same" padding before the first pixel, for a window span = (k - 1) d + 1 wide."""
    return max((conv_out(size, stride) - 1) * stride + span - size, 0) // 2


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is channels_last-contiguous (and not also NCHW-contiguous), else NCHW."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def relu6(t: torch.Tensor) -> torch.Tensor:
    return torch.clamp(t, 0.0, 6.0)  # keeps NaN, as nn.ReLU6 does


_ACT = {"relu": torch.relu, "relu6": relu6, "silu": F.silu, "hardswish": F.hardswish, "sigmoid": torch.sigmoid,
        "hardsigmoid": F.hardsigmoid}


def activate(t: torch.Tensor, name: str) -> torch.Tensor:
    """The activation the kernels call ``name`` ("none": t itself)."""
    return t if name == "none" else _ACT[name](t)


def mbconv_reference(x: torch.Tensor, w: FoldedWeights, se, spec) -> torch.Tensor:
    """The inverted-residual family's block (spec.BlockSpec) from folded weights, with F.conv2d;
    se: spec.SEWeights or None. The output keeps x's memory format."""
    w = unpacked(w)
    act = _ACT[spec.activation]
    h = x
    if w.w_expand is not None:
        h = act(F.conv2d(h, w.w_expand[:, :, None, None], w.b_expand))
    k, d, s = w.w_dw.shape[-1], spec.dilation, spec.stride
    span = (k - 1) * d + 1
    if spec.same_padding:
        top, left = same_pad_before(h.shape[2], s, span), same_pad_before(h.shape[3], s, span)
        bottom = max((conv_out(h.shape[2], s) - 1) * s + span - h.shape[2], 0) - top
        right = max((conv_out(h.shape[3], s) - 1) * s + span - h.shape[3], 0) - left
        h = F.pad(h, (left, right, top, bottom))
        padding = 0
    else:
        padding = (span - 1) // 2
    h = act(F.conv2d(h, w.w_dw[:, None], w.b_dw, stride=s, padding=padding, dilation=d, groups=w.w_dw.shape[0]))
    if se is not None:
        z = _ACT[spec.se_activation](F.conv2d(h.mean((2, 3), keepdim=True), se.w_reduce[:, :, None, None], se.b_reduce))
        h = h * _ACT[spec.se_gate](F.conv2d(z, se.w_expand[:, :, None, None], se.b_expand))
    y = F.conv2d(h, w.w_proj[:, :, None, None], w.b_proj)
    if spec.residual:
        y = y + x
    return y.contiguous(memory_format=output_memory_format(x))


def inverted_residual_reference(x: torch.Tensor, w: FoldedWeights, stride: int, residual: bool) -> torch.Tensor:
    """The block from folded weights with F.conv2d; the output keeps x's memory format."""
    h = x
    w = unpacked(w)
    if w.w_expand is not None:
        h = relu6(F.conv2d(h, w.w_expand[:, :, None, None], w.b_expand))
    h = relu6(F.conv2d(h, w.w_dw[:, None], w.b_dw, stride=stride, padding=1, groups=w.w_dw.shape[0]))
    y = F.conv2d(h, w.w_proj[:, :, None, None], w.b_proj)
    if residual:
        y = y + x
    return y.contiguous(memory_format=output_memory_format(x))
