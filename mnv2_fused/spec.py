"""The inverted-residual family's block, described once: what the modules find in a model, what the
reference computes, what the back ends say they support, and what the ops are called with.

    expand 1x1 (none when the block has no expand layer) + BN + act
    -> depthwise k x k (k 1/3/5/7, stride 1/2, dilation; symmetric or TensorFlow "same" padding) + BN + act
    -> optional squeeze-and-excite: mean over H, W -> 1x1 reduce + bias -> se_activation
       -> 1x1 expand + bias -> se_gate, multiplied into the hidden channels
    -> project 1x1 + BN (no activation) -> optional residual

BN is folded into the convolutions at inference (FoldedWeights, SEWeights).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

ACTIVATIONS = ("relu", "relu6", "silu", "hardswish")
SE_ACTIVATIONS = ("relu", "relu6", "silu", "hardswish")
SE_GATES = ("sigmoid", "hardsigmoid")
KERNEL_SIZES = (1, 3, 5, 7)


@dataclass(frozen=True)
class BlockSpec:
    kernel_size: int = 3
    stride: int = 1
    dilation: int = 1
    same_padding: bool = False  # TensorFlow's "same" (timm's tf_ models); else (k - 1) * dilation / 2
    activation: str = "relu6"  # after the expand and after the depthwise
    se_activation: str = "relu"  # the squeeze-and-excite's, when the block has one
    se_gate: str = "sigmoid"
    residual: bool = False
    squeeze_excite: bool = False  # whether the block has one (its weights: SEWeights)

    def __post_init__(self) -> None:
        if self.kernel_size not in KERNEL_SIZES:
            raise ValueError(f"kernel_size must be one of {KERNEL_SIZES}, got {self.kernel_size}")
        if self.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {self.stride}")
        if not 1 <= self.dilation <= 8:
            raise ValueError(f"dilation must be 1 to 8, got {self.dilation}")
        for name, value, allowed in (("activation", self.activation, ACTIVATIONS),
                                     ("se_activation", self.se_activation, SE_ACTIVATIONS),
                                     ("se_gate", self.se_gate, SE_GATES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.residual and self.stride != 1:
            raise ValueError("a residual block needs stride 1")

    def differs_from_mobilenet_v2(self) -> list[str]:
        """What this block has that MobileNetV2's (3x3, ReLU6, symmetric padding, no dilation, no
        squeeze-and-excite) has not: empty for MobileNetV2's own block."""
        return [what for what, differs in (
            (f"a {self.kernel_size}x{self.kernel_size} depthwise", self.kernel_size != 3),
            (f"dilation {self.dilation}", self.dilation != 1),
            ("'same' padding", self.same_padding),
            (self.activation, self.activation != "relu6"),
            ("squeeze-and-excite", self.squeeze_excite)) if differs]


class SEWeights(NamedTuple):
    """The squeeze-and-excite's 1x1 convolutions: reduce (se, hidden) + bias, expand (hidden, se) + bias."""

    w_reduce: torch.Tensor
    b_reduce: torch.Tensor
    w_expand: torch.Tensor
    b_expand: torch.Tensor


def op_arguments(spec: BlockSpec, se: Optional[SEWeights]) -> tuple:
    """The arguments of torch.ops.mnv2_fused.mbconv between b_dw and w_proj, and after b_proj."""
    se_args = tuple(se) if se is not None else (None, None, None, None)
    return se_args, (spec.stride, spec.dilation, spec.same_padding, spec.activation, spec.se_activation,
                     spec.se_gate, spec.residual)
