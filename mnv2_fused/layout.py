"""Folded weights laid out for the kernel of the device they live on.

The CPU kernel reads every weight with the output channel fastest; tensors whose strides say so
are used without a copy, others are transposed on every call. Caching this layout makes the call
copy-free. Other devices' kernels read contiguous weights."""
from __future__ import annotations

import torch

from .reference import FoldedWeights


def out_channel_fastest(w: torch.Tensor) -> torch.Tensor:
    """The same values as ``w`` (O, ...), stored with dim 0 fastest: the transpose is a view."""
    dims = list(range(w.dim()))
    order = dims[1:] + [0]  # storage order: remaining dims, then the output channel
    inverse = [order.index(d) for d in dims]
    return w.permute(order).contiguous().permute(inverse)


def for_kernel(w: FoldedWeights) -> FoldedWeights:
    """``w`` in the layout its device's fused kernel reads without copying."""
    if w.w_dw.device.type != "cpu":
        return FoldedWeights(*[None if t is None else t.contiguous() for t in w])
    w_dw = out_channel_fastest(w.w_dw.reshape(w.w_dw.shape[0], 9)).view(w.w_dw.shape)
    return FoldedWeights(
        None if w.w_expand is None else out_channel_fastest(w.w_expand),
        w.b_expand,
        w_dw,
        w.b_dw,
        out_channel_fastest(w.w_proj),
        w.b_proj,
    )


def stem_for_kernel(w_stem: torch.Tensor) -> torch.Tensor:
    """(hidden, Cin, 3, 3) stored as (Cin, 3, 3, hidden), the CPU kernel's layout."""
    if w_stem.device.type != "cpu":
        return w_stem.contiguous()
    return out_channel_fastest(w_stem)
