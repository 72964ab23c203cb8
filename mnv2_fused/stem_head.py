"""The network's two ends as fused ops: the stem (3x3 convolution + BN + ReLU6) with the
expand-free block after it, the head (1x1 convolution + BN + ReLU6) with the global average pool,
and the classifier. Each has a reference in plain PyTorch, used for devices and dtypes the CPU
kernel lacks."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _extension
from .backends import _has_kernel
from .layout import fold_for_kernel, kernel_layout, matrix_layout
from .reference import _relu6, as_matrix, fold_bn


class StemWeights(NamedTuple):
    """BN-folded stem convolution (hidden, Cin, 3, 3) and the depthwise and projection weights of
    the block after it, as in FoldedWeights."""

    w_stem: torch.Tensor
    b_stem: torch.Tensor
    w_dw: torch.Tensor
    b_dw: torch.Tensor
    w_proj: torch.Tensor
    b_proj: torch.Tensor


def fold_stem(stem: nn.Sequential, block_conv: nn.Sequential) -> StemWeights:
    """Folds torchvision's stem (Conv2dNormActivation) and the ``conv`` of an expand-free block,
    laid out for their device's kernel."""
    w_s, b_s = fold_bn(stem[0].weight, stem[1])
    w = fold_for_kernel(block_conv)
    return StemWeights(kernel_layout(w_s), b_s.detach().contiguous(), w.w_dw, w.b_dw, w.w_proj, w.b_proj)


def fold_head(head: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds torchvision's last Conv2dNormActivation (1x1) into (Cout, Cin) (packed for the CPU
    kernel, see layout.matrix_layout) and (Cout)."""
    w, b = fold_bn(head[0].weight, head[1])
    return matrix_layout(w.flatten(1)), b.detach().contiguous()


def stem_reference(x: torch.Tensor, w: StemWeights, stem_stride: int, stride: int) -> torch.Tensor:
    h = _relu6(F.conv2d(x, w.w_stem, w.b_stem, stride=stem_stride, padding=1))
    h = _relu6(F.conv2d(h, w.w_dw[:, None], w.b_dw, stride=stride, padding=1, groups=w.w_dw.shape[0]))
    y = F.conv2d(h, as_matrix(w.w_proj, w.b_proj.shape[0])[:, :, None, None], w.b_proj)
    return y.contiguous(memory_format=torch.channels_last)


def head_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w: (Cout, Cin) or packed."""
    w = as_matrix(w, b.shape[0])
    return _relu6(F.conv2d(x, w[:, :, None, None], b)).mean(dim=(2, 3))


def cpu_kernel_runs(x: torch.Tensor) -> bool:
    """Whether the CPU kernels of these ops can run x."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and _has_kernel("CPU")


def stem_block(x: torch.Tensor, w: StemWeights, stem_stride: int = 2, stride: int = 1,
               use_kernel: bool = True) -> torch.Tensor:
    """Stem convolution + ReLU6, depthwise + ReLU6, projection; channels_last output. The stem's
    output never exists on the CPU kernel's path."""
    if use_kernel and cpu_kernel_runs(x):
        return torch.ops.mnv2_fused.stem_inverted_residual(x, w.w_stem, w.b_stem, stem_stride, w.w_dw, w.b_dw,
                                                           w.w_proj, w.b_proj, stride)
    return stem_reference(x, w, stem_stride, stride)


def head_pool(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, use_kernel: bool = True) -> torch.Tensor:
    """mean over pixels of relu6(1x1 conv): (N, Cin, H, W) -> (N, Cout), without the (N, Cout, H, W)
    tensor on the CPU kernel's path."""
    if use_kernel and cpu_kernel_runs(x):
        return torch.ops.mnv2_fused.pointwise_relu6_mean(x, w, b)
    return head_reference(x, w, b)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, use_kernel: bool = True) -> torch.Tensor:
    """F.linear, on the CPU kernel when it can run x; w (O, K) or packed."""
    if use_kernel and cpu_kernel_runs(x):
        return torch.ops.mnv2_fused.linear(x, w, b)
    return F.linear(x, as_matrix(w, b.shape[0]), b)


if _extension.extension_loaded():

    @torch.library.register_fake("mnv2_fused::stem_inverted_residual")
    def _stem_fake(x, w_stem, b_stem, stem_stride, w_dw, b_dw, w_proj, b_proj, stride):
        torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
        n, _, h, wd = x.shape
        hh, hw = (h - 1) // stem_stride + 1, (wd - 1) // stem_stride + 1
        out = x.new_empty((n, b_proj.shape[0], (hh - 1) // stride + 1, (hw - 1) // stride + 1))
        return out.contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("mnv2_fused::mobilenet_v2_forward")
    def _network_fake(x, stem, stem_stride, stride, blocks, block_strides, block_residuals, head, classifier):
        torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
        return x.new_empty((x.shape[0], (classifier or head)[1].shape[0]))

    @torch.library.register_fake("mnv2_fused::linear")
    def _linear_fake(x, w, b):
        torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
        return x.new_empty((x.shape[0], b.shape[0]))

    @torch.library.register_fake("mnv2_fused::pointwise_relu6_mean")
    def _head_fake(x, w, b):
        torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
        return x.new_empty((x.shape[0], b.shape[0]))
