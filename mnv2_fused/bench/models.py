"""Models with random weights and randomized BatchNorm statistics (the default mean 0 / variance 1
would hide folding mistakes), and the distinct blocks of MobileNetV2 (Table 2 of the paper)."""
from __future__ import annotations

import torch
from torch import nn

# Table 2 of the paper: (t, c, n, s) per stage, from the 32-channel stem at 112x112.
TABLE2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def table2_blocks() -> list[tuple[int, int, int, int, int]]:
    """Every block of MobileNetV2 in order: (cin, cout, stride, t, input resolution at 224x224)."""
    blocks, cin, res = [], 32, 112
    for t, c, n, s in TABLE2:
        for i in range(n):
            stride = s if i == 0 else 1
            blocks.append((cin, c, stride, t, res))
            res = (res - 1) // stride + 1
            cin = c
    return blocks


def randomize(model: nn.Module, seed: int = 0, conv_weights: bool = True, conv_gain: float = 2.0) -> nn.Module:
    """Random BN affine parameters and running statistics, and (``conv_weights``) random convolution
    weights of variance conv_gain / fan_in, in place; returns ``model``. conv_gain 2 (He) keeps a
    ReLU network's activations level; SiLU and Hardswish networks need 1: with 2 a random
    EfficientNet-B7's outputs reach 1e6 and float32 keeps none of their digits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and conv_weights:
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (conv_gain / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
    return model


def make_block(cin: int, cout: int, stride: int, t: int, seed: int = 0) -> nn.Module:
    """torchvision's InvertedResidual with random weights, in eval mode."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    return randomize(InvertedResidual(cin, cout, stride, t), seed).eval()
