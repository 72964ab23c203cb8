"""Python face of the torch.ops.mnv2_fused ops: their fake (meta) kernels for tracing, and typed
entry points that run a back end already chosen (see backends.py)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import _extension
from .backends import select_backend
from .reference import (
    FoldedWeights,
    activate,
    as_matrix,
    conv_out,
    inverted_residual_reference,
    mbconv_reference,
    output_memory_format,
    unpacked,
)
from .spec import BlockSpec, SEWeights, op_arguments
from .stem_head import StemWeights, head_reference, stem_reference


def run_block(x: torch.Tensor, weights: FoldedWeights, stride: int, residual: bool, backend: str) -> torch.Tensor:
    """One inverted-residual block on a concrete back end ("cpu", "cuda", "triton" or "reference")."""
    if backend == "reference":
        return inverted_residual_reference(x, weights, stride, residual)
    if backend == "triton":
        from .triton import inverted_residual_triton

        return inverted_residual_triton(x, unpacked(weights), stride, residual)
    _extension.require_extension()
    return torch.ops.mnv2_fused.inverted_residual(x, *weights, stride, residual)


def run_mbconv(x: torch.Tensor, weights: FoldedWeights, se: Optional[SEWeights], spec: BlockSpec,
               backend: str) -> torch.Tensor:
    """One block of the inverted-residual family (spec.BlockSpec) on a concrete back end; the CUDA
    kernel only for MobileNetV2's block (backends.select_backend checked)."""
    if backend == "reference":
        return mbconv_reference(x, weights, se, spec)
    if backend == "triton":
        from .triton import mbconv_triton

        return mbconv_triton(x, unpacked(weights), se, spec)
    _extension.require_extension()
    if backend == "cuda":
        return torch.ops.mnv2_fused.inverted_residual(x, *weights, spec.stride, spec.residual)
    se_args, tail = op_arguments(spec, se)
    return torch.ops.mnv2_fused.mbconv(x, weights.w_expand, weights.b_expand, weights.w_dw, weights.b_dw, *se_args,
                                       weights.w_proj, weights.b_proj, *tail)


def inverted_residual(x: torch.Tensor, weights: FoldedWeights, stride: int, residual: bool,
                      backend: str = "auto") -> torch.Tensor:
    """Run one inverted-residual block from BN-folded weights.

    backend: "auto" | "cpu" | "cuda" | "triton" | "reference". An explicit back end that cannot
    run x raises RuntimeError with the reason.
    """
    return run_block(x, weights, stride, residual, select_backend(backend, x))


def stem_block(x: torch.Tensor, w: StemWeights, stem_stride: int, stride: int, use_kernel: bool) -> torch.Tensor:
    """Stem convolution + ReLU6, depthwise + ReLU6, projection; channels_last output. With the
    kernel (CPU float32) the stem's output never exists."""
    if use_kernel:
        return torch.ops.mnv2_fused.stem_inverted_residual(x, w.w_stem, w.b_stem, stem_stride, w.w_dw, w.b_dw,
                                                           w.w_proj, w.b_proj, stride)
    return stem_reference(x, w, stem_stride, stride)


def head_pool(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, use_kernel: bool) -> torch.Tensor:
    """mean over pixels of relu6(1x1 conv): (N, Cin, H, W) -> (N, Cout); with the kernel (CPU
    float32) without the (N, Cout, H, W) tensor."""
    if use_kernel:
        return torch.ops.mnv2_fused.pointwise_relu6_mean(x, w, b)
    return head_reference(x, w, b)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, use_kernel: bool, activation: str = "none") -> torch.Tensor:
    """activation(F.linear) with w (O, K) or packed, on the CPU kernel or through PyTorch."""
    if use_kernel:
        return torch.ops.mnv2_fused.linear(x, w, b, activation)
    return activate(F.linear(x, as_matrix(w, b.shape[0]), b), activation)


if _extension.extension_loaded():

    @torch.library.register_fake("mnv2_fused::inverted_residual")
    def _inverted_residual_fake(x, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, stride, residual):
        torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
        torch._check(stride in (1, 2), lambda: f"stride must be 1 or 2, got {stride}")
        # w_proj is (Cout, hidden) or packed, (groups, hidden, 16): hidden is dim 1 either way.
        torch._check(w_dw.shape[0] == w_proj.shape[1], lambda: "w_dw and w_proj disagree on the hidden width")
        for name, t in (("w_expand", w_expand), ("w_dw", w_dw), ("w_proj", w_proj)):
            torch._check(t is None or t.device == x.device, lambda: f"{name} is on {t.device} but x is on {x.device}")
        n, _, h, w = x.shape
        out = x.new_empty((n, b_proj.shape[0], conv_out(h, stride), conv_out(w, stride)))
        return out.contiguous(memory_format=output_memory_format(x))

    @torch.library.register_fake("mnv2_fused::mbconv")
    def _mbconv_fake(x, w_expand, b_expand, w_dw, b_dw, w_se_reduce, b_se_reduce, w_se_expand, b_se_expand, w_proj,
                     b_proj, stride, dilation, same_padding, activation, se_activation, se_gate, residual):
        torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
        torch._check(stride in (1, 2), lambda: f"stride must be 1 or 2, got {stride}")
        torch._check(w_dw.shape[0] == w_proj.shape[1], lambda: "w_dw and w_proj disagree on the hidden width")
        n, _, h, w = x.shape
        out = x.new_empty((n, b_proj.shape[0], conv_out(h, stride), conv_out(w, stride)))
        return out.contiguous(memory_format=output_memory_format(x))

    @torch.library.register_fake("mnv2_fused::inverted_residual_out")
    def _inverted_residual_out_fake(x, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, stride, residual, out):
        return None

    @torch.library.register_fake("mnv2_fused::stem_inverted_residual")
    def _stem_fake(x, w_stem, b_stem, stem_stride, w_dw, b_dw, w_proj, b_proj, stride):
        torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
        n, _, h, w = x.shape
        oh, ow = conv_out(conv_out(h, stem_stride), stride), conv_out(conv_out(w, stem_stride), stride)
        return x.new_empty((n, b_proj.shape[0], oh, ow)).contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("mnv2_fused::conv3x3")
    def _conv3x3_fake(x, w, b, stride, activation="none"):
        torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
        torch._check(stride in (1, 2), lambda: f"stride must be 1 or 2, got {stride}")
        n, _, h, wd = x.shape
        out = x.new_empty((n, b.shape[0], conv_out(h, stride), conv_out(wd, stride)))
        return out.contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("mnv2_fused::pointwise")
    def _pointwise_fake(x, w, b, activation="none"):
        torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
        n, _, h, wd = x.shape
        return x.new_empty((n, b.shape[0], h, wd)).contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("mnv2_fused::pointwise_relu6_mean")
    def _head_fake(x, w, b):
        torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
        return x.new_empty((x.shape[0], b.shape[0]))

    @torch.library.register_fake("mnv2_fused::linear")
    def _linear_fake(x, w, b, activation="none"):
        torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
        return x.new_empty((x.shape[0], b.shape[0]))

    @torch.library.register_fake("mnv2_fused::mobilenet_v2_forward")
    def _network_fake(x, stem, stem_stride, stride, blocks, block_strides, block_residuals, head, classifier):
        torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
        return x.new_empty((x.shape[0], (classifier or head)[1].shape[0]))
