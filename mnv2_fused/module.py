"""FusedInvertedResidual: a drop-in for torchvision.models.mobilenetv2.InvertedResidual."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from . import fold_cache
from ._extension import extension_loaded
from .backends import check_backend_name, select_backend
from .fold_cache import FastCall, FoldCache, note_change
from .layout import fold_for_kernel
from .ops import inverted_residual
from .reference import FoldedWeights


def _conv_bn_relu6(inp: int, oup: int, kernel: int, stride: int, groups: int,
                   norm_layer: Callable[..., nn.Module]) -> nn.Sequential:
    # Same children (0: conv, 1: norm, 2: ReLU6) as torchvision's Conv2dNormActivation, so the
    # state_dict keys match without importing torchvision.
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        norm_layer(oup),
        nn.ReLU6(inplace=True),
    )


class FusedInvertedResidual(nn.Module):
    """MobileNetV2 inverted-residual block that runs as one fused kernel at inference.

    Same constructor, submodules and state_dict keys as torchvision's InvertedResidual, so
    ``torchvision.models.mobilenet_v2(block=FusedInvertedResidual)`` works and torchvision
    checkpoints load unchanged.

    - eval mode with no gradient needed: BN folded into the convolutions (cached, refreshed when
      any parameter or buffer changes) and the fused kernel of ``backend``;
    - training mode, or a gradient needed: torchvision's exact unfused math, so fine-tuning works.

    backend: "auto" (the fastest back end that supports the input), "cpu", "cuda", "triton" or
    "reference". An explicit back end that cannot run an input raises RuntimeError saying why.
    In-place edits made through ``.data`` bypass version tracking: call ``refresh()`` after them.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int,
                 norm_layer: Optional[Callable[..., nn.Module]] = None, *, backend: str = "auto") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        check_backend_name(backend)
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.stride = stride
        self.backend = backend
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden_dim, 1, 1, 1, norm_layer))
        layers.extend([
            _conv_bn_relu6(hidden_dim, hidden_dim, 3, stride, hidden_dim, norm_layer),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            norm_layer(oup),
        ])
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1
        self.in_channels = inp
        self._fold_cache = FoldCache(fold_for_kernel)
        self._fast = FastCall()

    @classmethod
    def from_block(cls, block: nn.Module, backend: str = "auto") -> "FusedInvertedResidual":
        """A fused block that adopts ``block``'s submodules (the same tensors, no copy).

        ``block`` has torchvision's InvertedResidual layout: ``conv``, ``stride``, ``use_res_connect``.
        """
        check_backend_name(backend)
        conv = block.conv
        if len(conv) not in (3, 4) or not isinstance(conv[-2], nn.Conv2d):
            raise ValueError(f"not an InvertedResidual layout: {type(block).__name__} with conv {conv}")
        dw = conv[-3][0]
        if dw.kernel_size != (3, 3) or dw.groups != dw.in_channels or dw.padding != (1, 1):
            raise ValueError(f"the fused block needs a 3x3 depthwise convolution with padding 1, got {dw}")
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.stride = block.stride
        fused.backend = backend
        fused.use_res_connect = block.use_res_connect
        fused.conv = conv
        fused.out_channels = block.out_channels
        fused._is_cn = getattr(block, "_is_cn", block.stride > 1)
        fused.in_channels = conv[0][0].in_channels
        fused._fold_cache = FoldCache(fold_for_kernel)
        fused._fast = FastCall()
        fused.train(block.training)
        return fused

    @property
    def backend(self) -> str:
        """The back end this block runs on at inference (see the class docstring)."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        check_backend_name(value)
        self._backend = value
        note_change()  # a converted network's fast path depends on every block's backend

    # -- folded-weight cache ------------------------------------------------------------------
    def refresh(self) -> None:
        """Drop the cached folded weights; the next inference call folds BN again."""
        self._fold_cache.clear()
        self._fast.clear()

    def folded_weights(self) -> FoldedWeights:
        """BN-folded weights for inference, in the layout of their device's kernel; recomputed
        only when a parameter or buffer changed."""
        return self._fold_cache.get(self.conv)

    def _apply(self, fn, *args, **kwargs):
        self.refresh()
        return super()._apply(fn, *args, **kwargs)

    # -- forward --------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"FusedInvertedResidual expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"FusedInvertedResidual expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"FusedInvertedResidual expects {self.in_channels} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        if not x.dtype.is_floating_point:
            raise TypeError(f"FusedInvertedResidual expects a floating-point input, got {x.dtype}")
        weight = self.conv[-2].weight
        if x.device != weight.device:
            raise RuntimeError(f"FusedInvertedResidual: input is on {x.device} but the weights are on {weight.device}")
        if x.dtype != weight.dtype:
            raise TypeError(f"FusedInvertedResidual: input dtype {x.dtype} does not match the weights' {weight.dtype} "
                            "(convert one of them, e.g. model.to(x.dtype))")

    def _needs_reference(self, x: torch.Tensor) -> bool:
        if self.training:
            return True
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.conv.parameters())):
            return True
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fast path (see fold_cache.FastCall): C++ checks x (a float32 CPU tensor with this
        # block's channels) and the weights' versions.
        y = self._fast.run(x, self.training)
        return y if y is not None else self._checked_forward(x)

    def _checked_forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self._needs_reference(x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)
        changes = fold_cache.changes()  # read before the checks it vouches for
        weights, snapshot = self._fold_cache.get_with_snapshot(self.conv)
        if (snapshot is not None and extension_loaded() and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling() and select_backend(self.backend, x) == "cpu"):
            from . import _C

            self._fast.bind(_C.BlockCall(snapshot, *weights, self.stride, self.use_res_connect, self.in_channels),
                            changes)
        return inverted_residual(x, weights, self.stride, self.use_res_connect, self.backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"
