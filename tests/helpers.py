"""The oracle (torchvision with randomized weights and BN statistics) and error measures."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual

# Table 2 of the paper: (t, c, n, s) per stage, from the 32-channel stem at 112x112.
TABLE2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def table2_blocks():
    """Every distinct block of MobileNetV2: (cin, cout, stride, t, resolution at 224x224 input)."""
    blocks, cin, res = [], 32, 112
    for t, c, n, s in TABLE2:
        for i in range(n):
            stride = s if i == 0 else 1
            blocks.append((cin, c, stride, t, res))
            res = (res - 1) // stride + 1
            cin = c
    return blocks


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random conv weights and BN affine params and running stats (defaults would hide folding bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
    return model


def make_block(cin, cout, stride, t, seed=0):
    return randomize_bn(InvertedResidual(cin, cout, stride, t), seed).eval()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


def make_input(shape, layout="nchw", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontig":
        # A strided view: every other column of a wider tensor, channels permuted.
        n, c, h, w = shape
        wide = torch.randn(n, c, h, 2 * w, generator=g).to(dtype)
        x = wide[..., ::2]
        assert x.numel() == 0 or w == 1 or not x.is_contiguous()
    return x
