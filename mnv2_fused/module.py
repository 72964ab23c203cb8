"""FusedInvertedResidual: a drop-in for torchvision.models.mobilenetv2.InvertedResidual."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from . import backends
from .bound import generation
from .fused_module import FusedModule
from .layout import fold_for_kernel
from .ops import run_block
from .reference import FoldedWeights
from .tracing import fx_leaf_call, is_fx_proxy


def _conv_bn_relu6(inp: int, oup: int, kernel: int, stride: int, groups: int,
                   norm_layer: Callable[..., nn.Module]) -> nn.Sequential:
    # Same children (0: conv, 1: norm, 2: ReLU6) as torchvision's Conv2dNormActivation, so the
    # state_dict keys match without importing torchvision.
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        norm_layer(oup),
        nn.ReLU6(inplace=True),
    )


def check_input(x: torch.Tensor, who: str, channels: int, weight: torch.Tensor) -> None:
    """Raises what a wrong input to a fused module is, before any kernel sees it: not a 4-D
    floating-point tensor with ``channels`` channels and ``weight``'s device and dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{who} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{who}: the input has {x.shape[1]} channels, {channels} expected "
                         f"(input shape {tuple(x.shape)})")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{who} expects a floating-point input, got {x.dtype}")
    if x.device != weight.device:
        raise RuntimeError(f"{who}: input is on {x.device} but the weights are on {weight.device}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{who}: input dtype {x.dtype} does not match the weights' {weight.dtype} "
                        "(convert one of them, e.g. model.to(x.dtype))")


def _layer_is(m: nn.Module, kind: type, **attrs) -> bool:
    return isinstance(m, kind) and all(getattr(m, k) == v for k, v in attrs.items())


def unfusable_reason(block: nn.Module) -> Optional[str]:
    """None when ``block`` has torchvision MobileNetV2's InvertedResidual layout with layers the
    fused kernels compute exactly, else what differs."""
    conv = getattr(block, "conv", None)
    if not isinstance(conv, nn.Sequential) or len(conv) not in (3, 4) or not hasattr(block, "use_res_connect"):
        return f"{type(block).__name__} does not have MobileNetV2's InvertedResidual layout (conv, use_res_connect)"
    *stages, proj, bn = list(conv)
    for stage in stages:
        if not (isinstance(stage, nn.Sequential) and len(stage) == 3 and isinstance(stage[1], nn.BatchNorm2d)
                and type(stage[2]) is nn.ReLU6):
            return f"expected Conv2d + BatchNorm2d + ReLU6 stages, got {stage}"
    if len(stages) == 2 and not _layer_is(stages[0][0], nn.Conv2d, kernel_size=(1, 1), stride=(1, 1), groups=1,
                                          padding=(0, 0), dilation=(1, 1)):
        return f"the expand layer is not a plain 1x1 convolution: {stages[0][0]}"
    dw = stages[-1][0]
    if not (_layer_is(dw, nn.Conv2d, kernel_size=(3, 3), padding=(1, 1), dilation=(1, 1), groups=dw.in_channels,
                      out_channels=dw.in_channels)
            and dw.stride in ((1, 1), (2, 2)) and dw.stride[0] == block.stride):
        return f"the fused kernels need a 3x3 depthwise convolution with padding 1 and stride 1 or 2, got {dw}"
    if not (_layer_is(proj, nn.Conv2d, kernel_size=(1, 1), stride=(1, 1), groups=1) and isinstance(bn, nn.BatchNorm2d)):
        return f"the projection is not a 1x1 convolution and BatchNorm2d: {proj}, {bn}"
    for m in conv.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            return f"convolutions with a bias are not folded: {m}"
        if isinstance(m, nn.BatchNorm2d) and not m.track_running_stats:
            return f"BatchNorm2d without running statistics cannot be folded: {m}"
    return None


class FusedInvertedResidual(FusedModule, nn.Module):
    """MobileNetV2 inverted-residual block that runs as one fused kernel at inference.

    Same constructor, submodules and state_dict keys as torchvision's InvertedResidual, so
    ``torchvision.models.mobilenet_v2(block=FusedInvertedResidual)`` works and torchvision
    checkpoints load unchanged.

    - eval mode with no gradient needed: BN folded into the convolutions (cached, refreshed when
      any parameter or buffer changes, see bound.py) and the fused kernel of ``backend``;
    - training mode, a gradient needed, ONNX export or TorchScript: torchvision's exact unfused
      math, through the block's own layers.

    backend: "auto" (the fastest back end that supports the input), "cpu", "cuda", "triton" or
    "reference". An explicit back end that cannot run an input raises RuntimeError saying why.
    Edits that bypass version tracking (``.data``, in-place edits of inference tensors) need
    ``refresh()``.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int,
                 norm_layer: Optional[Callable[..., nn.Module]] = None, *, backend: str = "auto") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        hidden_dim = int(round(inp * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden_dim, 1, 1, 1, norm_layer))
        layers.extend([
            _conv_bn_relu6(hidden_dim, hidden_dim, 3, stride, hidden_dim, norm_layer),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            norm_layer(oup),
        ])
        self._adopt(nn.Sequential(*layers), stride, stride == 1 and inp == oup, oup, backend)

    @classmethod
    def from_block(cls, block: nn.Module, backend: str = "auto") -> "FusedInvertedResidual":
        """A fused block that adopts ``block``'s submodules (the same tensors, no copy).

        ``block`` has torchvision MobileNetV2's InvertedResidual layout; ValueError says what
        differs otherwise.
        """
        reason = unfusable_reason(block)
        if reason is not None:
            raise ValueError(f"mnv2_fused: cannot fuse {type(block).__name__}: {reason}")
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused._adopt(block.conv, block.stride, block.use_res_connect, block.out_channels, backend)
        fused.train(block.training)
        return fused

    def _adopt(self, conv: nn.Sequential, stride: int, use_res_connect: bool, oup: int, backend: str) -> None:
        self.conv = conv
        self.stride = stride
        self.use_res_connect = use_res_connect
        self.out_channels = oup
        self._is_cn = stride > 1
        self.in_channels = conv[0][0].in_channels
        self._init_fused(fold_for_kernel, backend)

    def folded_weights(self) -> FoldedWeights:
        """BN-folded weights for inference, in the layout of their device's kernel; recomputed
        only when a parameter or buffer changed."""
        return self._fused_bound.weights(self.conv)

    def rehome_folded_weights(self, old: FoldedWeights, new: FoldedWeights) -> None:
        """Holds ``new`` (``old``'s values in other memory: a converted network's weights in huge
        pages) as this block's folded weights while ``old`` is still its fold."""
        self._fused_bound.rehome(old, new)

    def _unfused(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's InvertedResidual.forward, through this block's own layers."""
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)

    def _fused_dispatch(self, x: torch.Tensor) -> torch.Tensor:
        if is_fx_proxy(x):
            return fx_leaf_call(self, x, self._unfused)
        check_input(x, "FusedInvertedResidual", self.in_channels, self.conv[-2].weight)
        seen = generation()  # read before the checks a binding relies on
        chosen = backends.route(self.backend, x, self.training, self.conv.parameters)
        if chosen == backends.UNFUSED:
            return self._unfused(x)
        weights = self.folded_weights()
        if backends.may_bind(chosen):
            self._fused_bound.bind(self._block_call, seen)
        return run_block(x, weights, self.stride, self.use_res_connect, chosen)

    def _block_call(self, weights: FoldedWeights, versions):
        from . import _C

        return _C.OpCall(versions, "mnv2_fused::inverted_residual", self.in_channels,
                         [*weights, self.stride, self.use_res_connect])

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"
