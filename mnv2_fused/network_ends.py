"""The layers around the blocks of torchvision's EfficientNet and MobileNetV3 fused in place: the
stem (the 3x3 Conv2dNormActivation at the start of ``features``), the 1x1 Conv2dNormActivation at
its end (convolution, BN, activation) and the Linear layers of the classifier. As with the blocks
(family_block.py), each becomes a subclass of its own class, so its attributes, state_dict keys
and isinstance checks stay as they were. At inference on float32 CPU tensors it runs the CPU
kernels (BN folded into the weights, the activation applied in the same call, the weights cached
in the layout the kernel reads); in training, with gradients, in ONNX export, FX and TorchScript it
runs its own layers. The Linear layers are mnv2_fused.linear, the GEMM (weights packed, which
stream from memory fastest), the 1x1 convolution mnv2_fused.pointwise, that GEMM over the pixels
(no copy of channels_last input, where PyTorch's own convolution takes a slow path: EfficientNet-B0's
head 0.36 ms against 0.13 ms at batch 1), the stem mnv2_fused.conv3x3, one pass instead of three.
After its first forward a layer is bound to its op (bound.py): later forwards are one C++ call.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import backends
from .families import Unfusable, activation_name, base_class_path
from .bound import generation
from .fused_module import FusedSubclass, fused_subclass
from .layout import conv3x3_layout, matrix_layout
from .reference import fold_bn
from .tracing import is_fx_proxy

# The networks whose last layers are fused, by class path (importing mnv2_fused needs no torchvision).
NETWORKS = ("torchvision.models.efficientnet.EfficientNet", "torchvision.models.mobilenetv3.MobileNetV3")
_CONV_NORM_ACT = "torchvision.ops.misc.Conv2dNormActivation"


def _is_plain_conv(conv: nn.Module, kernel: int, strides: tuple) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (kernel, kernel) and conv.stride[0] in strides
            and conv.stride[0] == conv.stride[1] and conv.padding == (kernel // 2, kernel // 2)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None
            and conv.padding_mode == "zeros")


def conv_norm_act_reason(m: nn.Module) -> Optional[str]:
    """None when ``m`` is a Conv2dNormActivation the kernels compute (a 1x1 convolution, or a 3x3
    one with padding 1 and stride 1 or 2, without bias or groups; BatchNorm2d with running
    statistics; ReLU/ReLU6/SiLU/Hardswish or no activation), else why not."""
    if base_class_path(m) != _CONV_NORM_ACT:
        return f"{type(m).__name__} is not torchvision's Conv2dNormActivation"
    layers = list(m)
    conv, bn = layers[0], layers[1] if len(layers) > 1 else None
    if not (_is_plain_conv(conv, 1, (1,)) or _is_plain_conv(conv, 3, (1, 2))):
        return "its convolution is neither a plain 1x1 one nor a 3x3 one with padding 1 and stride 1 or 2"
    if not (isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None):
        return "it has no BatchNorm2d with running statistics after the convolution"
    if len(layers) > 3:
        return "it has more than a convolution, a BatchNorm2d and an activation"
    if len(layers) == 3:
        try:
            activation_name(layers[2])
        except Unfusable as e:
            return str(e)
    return None


def _fold_conv_norm_act(m: nn.Module) -> tuple:
    layers = list(m)
    why = conv_norm_act_reason(m)
    if why is not None:  # a layer replaced since it was fused
        raise Unfusable(why)
    conv = layers[0]
    w, b = fold_bn(conv.weight, layers[1])
    act = activation_name(layers[2]) if len(layers) == 3 else "none"
    layout = matrix_layout(w.flatten(1)) if conv.kernel_size == (1, 1) else conv3x3_layout(w)
    return layout, b.detach().contiguous(), act, conv.stride[0]


def _fold_linear(m: nn.Linear) -> tuple:
    b = m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
    return matrix_layout(m.weight.detach()), b.contiguous()


class FusedLayer(FusedSubclass):
    """What the fused subclasses add; it comes first in their bases, the original class second."""

    def __init__(self, *args, backend: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)  # the original class's constructor: a drop-in
        _check_backend(backend)
        self._init_fused(_FOLDS[self._fused_base], backend)

    def _kernel_runs(self, x: torch.Tensor) -> bool:
        if self.backend == "cpu":
            why = backends.why_not("cpu", x)
            if why is not None:
                raise RuntimeError(f"mnv2_fused: backend='cpu' cannot run this input: {why}")
        return backends.cpu_kernel_runs(x)

    def _fused_dispatch(self, x: torch.Tensor) -> torch.Tensor:
        if is_fx_proxy(x) or backends.needs_unfused(x, self.training, self.parameters) or not self._kernel_runs(x):
            return self._unfused(x)
        seen = generation()  # read before the checks a binding relies on
        try:
            folded = self._fused_bound.weights(self)
        except Unfusable as e:  # a layer was replaced by one the kernels do not compute
            if self.backend != "auto":
                raise RuntimeError(f"mnv2_fused: backend={self.backend!r} cannot run this layer: {e}") from e
            return self._unfused(x)
        if backends.may_bind("cpu"):
            self._fused_bound.bind(self._op_call, seen)
        return self._run_kernel(x, folded)


class _ConvNormActKernel(FusedLayer):
    def _run_kernel(self, x: torch.Tensor, folded: tuple) -> torch.Tensor:
        w, b, act, stride = folded
        if x.dim() != 4 or x.shape[1] != self[0].in_channels:
            return self._unfused(x)  # PyTorch's own error message
        if w.dim() == 4:  # the 3x3 convolution
            return torch.ops.mnv2_fused.conv3x3(x, w, b, stride, act)
        return torch.ops.mnv2_fused.pointwise(x, w, b, act)

    def _op_call(self, folded: tuple, versions):
        from . import _C

        w, b, act, stride = folded
        if w.dim() == 4:
            return _C.OpCall(versions, "mnv2_fused::conv3x3", self[0].in_channels, [w, b, stride, act])
        return _C.OpCall(versions, "mnv2_fused::pointwise", self[0].in_channels, [w, b, act])


class _LinearKernel(FusedLayer):
    def _run_kernel(self, x: torch.Tensor, folded: tuple) -> torch.Tensor:
        w, b = folded
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            return self._unfused(x)
        y = torch.ops.mnv2_fused.linear(x.reshape(-1, self.in_features), w, b)
        return y.view(*x.shape[:-1], self.out_features)

    def _op_call(self, folded: tuple, versions):
        from . import _C

        w, b = folded
        return _C.OpCall(versions, "mnv2_fused::linear", self.in_features, [w, b, "none"], input_dim=2)


_FOLDS = {}  # original class -> fold function
_KERNELS = {}  # original class -> mixin


def _register_known() -> None:
    _FOLDS[nn.Linear], _KERNELS[nn.Linear] = _fold_linear, _LinearKernel
    try:
        from torchvision.ops.misc import Conv2dNormActivation
    except ImportError:  # torchvision is the model owner's; without it there is nothing to fuse
        return
    _FOLDS[Conv2dNormActivation], _KERNELS[Conv2dNormActivation] = _fold_conv_norm_act, _ConvNormActKernel


def fused_layer_class(base: type) -> type:
    """The fused subclass of nn.Linear or torchvision's Conv2dNormActivation (made once per class).
    The latter computes 1x1 and 3x3 convolutions (conv_norm_act_reason); others run its own
    layers."""
    if base not in _KERNELS:
        _register_known()
    if base not in _KERNELS:
        raise TypeError(f"mnv2_fused: no fused version of {base.__module__}.{base.__qualname__}")
    return fused_subclass(base, _KERNELS[base], __name__)


def _check_backend(backend: str) -> None:
    backends.check_backend_name(backend)
    if backend not in ("auto", "cpu"):
        raise ValueError(f"mnv2_fused: the head and classifier layers run on the CPU kernels only "
                         f"(backend 'auto' or 'cpu'), got {backend!r}")


def _fuse_layer(m: nn.Module, backend: str) -> None:
    if isinstance(m, FusedLayer):
        m.backend = backend
        return
    m.__class__ = fused_layer_class(type(m))
    m._init_fused(_FOLDS[m._fused_base], backend)


def fuse_network_ends(model: nn.Module, backend: str = "auto") -> list[nn.Module]:
    """Fuses, in place, the first and last Conv2dNormActivation of ``features`` (the 3x3 stem, the
    1x1 head) and the classifier's Linear layers of a torchvision EfficientNet or MobileNetV3
    (back end "auto" or "cpu"); the layers fused. Anything else is left as it is."""
    _check_backend(backend)
    if base_class_path(model) not in NETWORKS:
        return []
    fused = []
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if isinstance(features, nn.Sequential) and len(features) > 1:
        for layer in dict.fromkeys((features[0], features[-1])):
            if conv_norm_act_reason(layer) is None:
                _fuse_layer(layer, backend)
                fused.append(layer)
    if isinstance(classifier, nn.Module):
        for m in classifier.modules():
            if base_class_path(m) == "torch.nn.modules.linear.Linear":
                _fuse_layer(m, backend)
                fused.append(m)
    return fused
