"""Folded weights laid out for the kernel of the device they live on.

The CPU kernels read every weight with the output channel fastest; tensors whose strides say so
are used without a copy, others are transposed on every call. The matrices of 1x1 convolutions
and the classifier are cached packed (pack_columns), which streams fastest. Caching this layout
makes the call copy-free, except for 3x3 convolutions' weights (a stem's: 27 x 32 floats), which
the CPU kernels pack on every call. Other devices' kernels read contiguous weights."""
from __future__ import annotations

import torch
from torch import nn

from .reference import FoldedWeights, as_matrix, fold_block

__all__ = ["as_matrix", "conv3x3_layout", "fold_for_kernel", "for_kernel", "kernel_layout", "matrix_layout",
           "out_channel_fastest", "pack_columns"]  # as_matrix lives with the reference, which reads packed weights too


def out_channel_fastest(w: torch.Tensor) -> torch.Tensor:
    """The same values as ``w`` (O, ...), stored with dim 0 fastest: the transpose is a view."""
    dims = list(range(w.dim()))
    order = dims[1:] + [0]  # storage order: remaining dims, then the output channel
    inverse = [order.index(d) for d in dims]
    return w.permute(order).contiguous().permute(inverse)


def kernel_layout(w: torch.Tensor) -> torch.Tensor:
    """A weight (O, ...) as its device's kernel reads it in place, detached from autograd."""
    w = w.detach()
    return out_channel_fastest(w) if w.device.type == "cpu" else w.contiguous()


PACKED_COLUMNS = 16  # kPackedColumns in csrc/layout.h


def pack_columns(w: torch.Tensor) -> torch.Tensor:
    """A weight (O, K) as the CPU head and classifier kernels stream it: (ceil(O/16), K, 16),
    output channels 16g..16g+15 of every k contiguous in block g, zeros past O. Read once per
    forward from far caches or memory, a block is one contiguous run instead of a 64-byte piece
    of every row (measured: about 1.5-2x the streaming speed)."""
    o, k = w.shape
    groups = -(-o // PACKED_COLUMNS)
    padded = w.detach().new_zeros(groups * PACKED_COLUMNS, k)
    padded[:o] = w.detach()
    return padded.view(groups, PACKED_COLUMNS, k).transpose(1, 2).contiguous()


def matrix_layout(w: torch.Tensor) -> torch.Tensor:
    """A (O, K) weight (a 1x1 convolution, the classifier) as its device's kernel reads it: packed
    for the CPU kernels (float32 on the CPU), else kernel_layout."""
    if w.device.type == "cpu" and w.dtype == torch.float32:
        return pack_columns(w)
    return kernel_layout(w)


def conv3x3_layout(w: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution's weight (O, Cin, 3, 3) for the CPU kernels, which pack it for their
    GEMM on every call (it is small): the same values stored (3, 3, Cin, O), the patches' order,
    so the packing reads it in order; detached."""
    w = w.detach()
    if w.device.type != "cpu":
        return w.contiguous()
    return w.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)


def for_kernel(w: FoldedWeights) -> FoldedWeights:
    """Every weight of ``w`` in the layout its device's fused kernel reads without copying."""
    hidden = w.w_dw.shape[0]
    return FoldedWeights(
        None if w.w_expand is None else matrix_layout(w.w_expand),
        w.b_expand,
        kernel_layout(w.w_dw.reshape(hidden, -1)).view(w.w_dw.shape),  # taps, then channels
        w.b_dw,
        matrix_layout(w.w_proj),
        w.b_proj,
    )


def fold_for_kernel(conv: nn.Sequential) -> FoldedWeights:
    """fold_block, laid out for the kernel of the weights' device."""
    return for_kernel(fold_block(conv))
