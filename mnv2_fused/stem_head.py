"""The network's two ends: the stem (3x3 convolution + BN + ReLU6) with the expand-free block
after it, and the head (1x1 convolution + BN + ReLU6) with the global average pool. Their folding,
and their references in plain PyTorch (for devices and dtypes the CPU kernels lack); the ops
themselves are in ops.py."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layout import conv3x3_layout, matrix_layout
from .reference import FoldedWeights, as_matrix, fold_bn, relu6


class StemWeights(NamedTuple):
    """BN-folded stem convolution (hidden, Cin, 3, 3) and the depthwise and projection weights of
    the block after it, as in FoldedWeights."""

    w_stem: torch.Tensor
    b_stem: torch.Tensor
    w_dw: torch.Tensor
    b_dw: torch.Tensor
    w_proj: torch.Tensor
    b_proj: torch.Tensor


def fold_stem(stem: nn.Sequential, block: FoldedWeights) -> StemWeights:
    """Folds torchvision's stem (Conv2dNormActivation) in front of the folded weights of an
    expand-free block (as its device's kernel reads them)."""
    w_s, b_s = fold_bn(stem[0].weight, stem[1])
    return StemWeights(conv3x3_layout(w_s), b_s.detach().contiguous(), block.w_dw, block.b_dw, block.w_proj,
                       block.b_proj)


def fold_head(head: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds torchvision's last Conv2dNormActivation (1x1) into (Cout, Cin) (packed for the CPU
    kernel, see layout.matrix_layout) and (Cout)."""
    w, b = fold_bn(head[0].weight, head[1])
    return matrix_layout(w.flatten(1)), b.detach().contiguous()


def stem_reference(x: torch.Tensor, w: StemWeights, stem_stride: int, stride: int) -> torch.Tensor:
    h = relu6(F.conv2d(x, w.w_stem, w.b_stem, stride=stem_stride, padding=1))
    h = relu6(F.conv2d(h, w.w_dw[:, None], w.b_dw, stride=stride, padding=1, groups=w.w_dw.shape[0]))
    y = F.conv2d(h, as_matrix(w.w_proj, w.b_proj.shape[0])[:, :, None, None], w.b_proj)
    return y.contiguous(memory_format=torch.channels_last)


def head_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w: (Cout, Cin) or packed."""
    w = as_matrix(w, b.shape[0])
    return relu6(F.conv2d(x, w[:, :, None, None], b)).mean(dim=(2, 3))
