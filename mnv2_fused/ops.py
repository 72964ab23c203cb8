"""Python face of torch.ops.mnv2_fused.inverted_residual: fake (meta) kernel for tracing, and the
typed entry point that picks a back end."""
from __future__ import annotations

import torch

from . import _extension
from .backends import select_backend
from .reference import FoldedWeights, inverted_residual_reference, output_memory_format, unpacked


def output_shape(x_shape, cout: int, stride: int) -> tuple:
    n, _, h, w = x_shape
    return (n, cout, (h - 1) // stride + 1, (w - 1) // stride + 1)


if _extension.extension_loaded():

    @torch.library.register_fake("mnv2_fused::inverted_residual")
    def _inverted_residual_fake(x, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, stride, residual):
        torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
        torch._check(stride in (1, 2), lambda: f"stride must be 1 or 2, got {stride}")
        torch._check(w_dw.shape[0] == w_proj.shape[1], lambda: "w_dw and w_proj disagree on the hidden width")
        for name, t in (("w_expand", w_expand), ("w_dw", w_dw), ("w_proj", w_proj)):
            torch._check(t is None or t.device == x.device, lambda: f"{name} is on {t.device} but x is on {x.device}")
        out = x.new_empty(output_shape(x.shape, b_proj.shape[0], stride))
        return out.contiguous(memory_format=output_memory_format(x))

    @torch.library.register_fake("mnv2_fused::inverted_residual_out")
    def _inverted_residual_out_fake(x, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, stride, residual, out):
        return None


def inverted_residual(x: torch.Tensor, weights: FoldedWeights, stride: int, residual: bool,
                      backend: str = "auto") -> torch.Tensor:
    """Run one inverted-residual block from BN-folded weights.

    backend: "auto" | "cpu" | "cuda" | "triton" | "reference". An explicit back end that cannot
    run x raises RuntimeError with the reason.
    """
    chosen = select_backend(backend, x)
    if chosen == "reference":
        return inverted_residual_reference(x, weights, stride, residual)
    if chosen == "triton":
        from .triton import inverted_residual_triton

        return inverted_residual_triton(x, unpacked(weights), stride, residual)
    _extension.require_extension()
    return torch.ops.mnv2_fused.inverted_residual(x, *weights, stride, residual)
