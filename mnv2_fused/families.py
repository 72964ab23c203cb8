"""The inverted-residual blocks of the other model families, read into the one block spec.

torchvision: MobileNetV3's InvertedResidual, EfficientNet's MBConv, MNASNet's _InvertedResidual;
timm: InvertedResidual and DepthwiseSeparableConv (mobilenetv2_*, mobilenetv3_*, mnasnet_*,
efficientnet_*, tf_efficientnet_*). Each reader finds the block's layers (expand, depthwise,
squeeze-and-excite, projection) and its activations, or raises Unfusable with what differs from the
spec. Classes are recognised by name, so importing mnv2_fused needs neither torchvision nor timm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .layout import for_kernel, kernel_layout
from .reference import FoldedWeights, fold_bn
from .spec import BlockSpec, SEWeights


class Unfusable(ValueError):
    """A block whose layers the fused kernels do not compute; the message says what differs."""


def class_path(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


# Activation modules by class name (torch.nn's, and timm's own versions of the same functions).
_ACTIVATIONS = {"ReLU": "relu", "ReLU6": "relu6", "SiLU": "silu", "Swish": "silu", "Hardswish": "hardswish",
                "HardSwish": "hardswish", "Sigmoid": "sigmoid", "Hardsigmoid": "hardsigmoid",
                "HardSigmoid": "hardsigmoid"}


def activation_name(m: Optional[nn.Module]) -> str:
    cls = type(m)
    if m is not None and cls.__name__ in _ACTIVATIONS and cls.__module__.startswith(("torch.nn", "timm.")):
        return _ACTIVATIONS[cls.__name__]
    raise Unfusable(f"activation {cls.__name__} is not one of ReLU, ReLU6, SiLU, Hardswish (or a Sigmoid or "
                    "Hardsigmoid gate)")


def _is_identity(m: Optional[nn.Module]) -> bool:
    # Dropout is the identity at inference, the only time the fused path runs.
    return m is None or isinstance(m, (nn.Identity, nn.Dropout))


@dataclass
class Layers:
    """A block's layers, in the spec's order."""

    expand: Optional[tuple]  # (Conv2d 1x1, BatchNorm2d), or None
    depthwise: tuple  # (Conv2d k x k, BatchNorm2d)
    se: Optional[tuple]  # (Conv2d reduce, Conv2d expand), both with a bias, or None
    project: tuple  # (Conv2d 1x1, BatchNorm2d)
    activation: str
    se_activation: str = "relu"
    se_gate: str = "sigmoid"
    same_padding: bool = False
    residual: bool = False


def _check_bn(bn: nn.Module, channels: int) -> None:
    if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats or bn.num_features != channels:
        raise Unfusable(f"expected BatchNorm2d({channels}) with running statistics, got {bn}")


def spec_of(layers: Layers) -> BlockSpec:
    """The block spec of ``layers``, after checking every layer is one the kernels compute."""
    dw, dw_bn = layers.depthwise
    hidden = dw.in_channels
    if not (isinstance(dw, nn.Conv2d) and dw.groups == hidden == dw.out_channels and dw.bias is None):
        raise Unfusable(f"the depthwise layer is not a depthwise convolution without bias: {dw}")
    k, (sy, sx), (dy, dx) = dw.kernel_size, dw.stride, dw.dilation
    if k[0] != k[1] or k[0] % 2 == 0 or k[0] > 7 or sy != sx or sy not in (1, 2) or dy != dx:
        raise Unfusable(f"the depthwise convolution must be square, odd (up to 7), stride 1 or 2: {dw}")
    pad = (k[0] - 1) * dy // 2
    if not layers.same_padding and (dw.padding != (pad, pad) or dw.padding_mode != "zeros"):
        raise Unfusable(f"the depthwise convolution's padding must be {pad} (or TensorFlow 'same'): {dw}")
    _check_bn(dw_bn, hidden)
    if layers.expand is not None:
        conv, bn = layers.expand
        if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                and conv.groups == 1 and conv.bias is None and conv.out_channels == hidden):
            raise Unfusable(f"the expand layer is not a 1x1 convolution without bias to {hidden} channels: {conv}")
        _check_bn(bn, hidden)
    conv, bn = layers.project
    if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.groups == 1 and conv.bias is None and conv.in_channels == hidden):
        raise Unfusable(f"the projection is not a 1x1 convolution without bias from {hidden} channels: {conv}")
    _check_bn(bn, conv.out_channels)
    if layers.se is not None:
        reduce, expand = layers.se
        for c in (reduce, expand):
            if not (isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.groups == 1 and c.bias is not None):
                raise Unfusable(f"the squeeze-and-excite's layers must be 1x1 convolutions with bias, got {c}")
        if reduce.in_channels != hidden or expand.out_channels != hidden or expand.in_channels != reduce.out_channels:
            raise Unfusable("the squeeze-and-excite's widths do not match the hidden width")
    return BlockSpec(kernel_size=k[0], stride=sy, dilation=dy, same_padding=layers.same_padding,
                     activation=layers.activation, se_activation=layers.se_activation, se_gate=layers.se_gate,
                     residual=layers.residual, squeeze_excite=layers.se is not None)


def fold_layers(layers: Layers) -> tuple[FoldedWeights, Optional[SEWeights]]:
    """BN folded into the convolutions, laid out for the kernel of the weights' device."""
    dw, dw_bn = layers.depthwise
    w_e = b_e = None
    if layers.expand is not None:
        w_e, b_e = fold_bn(layers.expand[0].weight, layers.expand[1])
        w_e = w_e.flatten(1)
    w_d, b_d = fold_bn(dw.weight, dw_bn)
    w_p, b_p = fold_bn(layers.project[0].weight, layers.project[1])
    parts = [w_e, b_e, w_d[:, 0], b_d, w_p.flatten(1), b_p]
    weights = for_kernel(FoldedWeights(*[None if p is None else p.detach().contiguous() for p in parts]))
    se = None
    if layers.se is not None:
        reduce, expand = layers.se
        se = SEWeights(kernel_layout(reduce.weight.flatten(1)), reduce.bias.detach().contiguous(),
                       kernel_layout(expand.weight.flatten(1)), expand.bias.detach().contiguous())
    return weights, se


# -- torchvision -----------------------------------------------------------------------------------
def _conv_norm_act(stage: nn.Module) -> tuple:
    """(conv, bn, activation name or None) of a torchvision Conv2dNormActivation."""
    mods = list(stage) if isinstance(stage, nn.Sequential) else []
    if len(mods) not in (2, 3) or not isinstance(mods[0], nn.Conv2d):
        raise Unfusable(f"expected a convolution, a norm and an activation, got {stage}")
    return mods[0], mods[1], activation_name(mods[2]) if len(mods) == 3 else None


def _torchvision_se(se: nn.Module) -> tuple:
    if type(se).__name__ != "SqueezeExcitation":
        raise Unfusable(f"expected a SqueezeExcitation, got {type(se).__name__}")
    return (se.fc1, se.fc2), activation_name(se.activation), activation_name(se.scale_activation)


def read_torchvision_block(block: nn.Module) -> Layers:
    """torchvision's MobileNetV3 InvertedResidual and EfficientNet MBConv: ``block`` holds
    [expand], depthwise, [SqueezeExcitation], projection; stochastic depth is the identity at inference."""
    stages = list(block.block)
    se_stage = [s for s in stages if type(s).__name__ == "SqueezeExcitation"]
    convs = [s for s in stages if s not in se_stage]
    if len(convs) not in (2, 3) or len(se_stage) > 1:
        raise Unfusable(f"expected [expand], depthwise, [squeeze-and-excite], projection; got {len(stages)} stages")
    *front, project = [_conv_norm_act(s) for s in convs]
    if project[2] is not None:
        raise Unfusable("the projection has an activation")
    acts = {a for _, _, a in front}
    if None in acts or len(acts) != 1:
        raise Unfusable("the expand and depthwise layers must have one activation")
    se, se_act, gate = (None, "relu", "sigmoid")
    if se_stage:
        if stages.index(se_stage[0]) != stages.index(convs[-1]) - 1:
            raise Unfusable("the squeeze-and-excite must come right before the projection")
        se, se_act, gate = _torchvision_se(se_stage[0])
    return Layers(expand=front[0][:2] if len(front) == 2 else None, depthwise=front[-1][:2], se=se,
                  project=project[:2], activation=acts.pop(), se_activation=se_act, se_gate=gate,
                  residual=bool(block.use_res_connect))


def read_torchvision_mnasnet(block: nn.Module) -> Layers:
    """torchvision MNASNet's _InvertedResidual: conv, BN, ReLU, depthwise, BN, ReLU, conv, BN."""
    m = list(block.layers)
    if len(m) != 8:
        raise Unfusable(f"expected 8 layers, got {len(m)}")
    act = activation_name(m[2])
    if activation_name(m[5]) != act:
        raise Unfusable("the expand and depthwise layers must have one activation")
    return Layers(expand=(m[0], m[1]), depthwise=(m[3], m[4]), se=None, project=(m[6], m[7]), activation=act,
                  residual=bool(block.apply_residual))


# -- timm ------------------------------------------------------------------------------------------
def _timm_bn_act(bn: nn.Module) -> Optional[str]:
    """The activation of timm's BatchNormAct2d (None for an Identity), after checking its dropout."""
    if not _is_identity(getattr(bn, "drop", None)):
        raise Unfusable(f"the norm layer {type(bn).__name__} has a dropout that is not the identity")
    act = getattr(bn, "act", None)
    return None if _is_identity(act) else activation_name(act)


def _timm_same(conv: nn.Module) -> bool:
    return type(conv).__name__ == "Conv2dSame" or getattr(conv, "padding", None) == "same"


def _timm_se(block: nn.Module) -> tuple:
    se = block.se
    if _is_identity(se):
        return None, "relu", "sigmoid"
    if type(se).__name__ != "SqueezeExcite" or not _is_identity(getattr(se, "bn", None)):
        raise Unfusable(f"the squeeze-and-excite {type(se).__name__} is not timm's SqueezeExcite without a norm")
    return (se.conv_reduce, se.conv_expand), activation_name(se.act1), activation_name(se.gate)


def _timm_common(block: nn.Module) -> None:
    if getattr(block, "conv_s2d", None) is not None:
        raise Unfusable("space-to-depth stems are not fused")
    if not _is_identity(getattr(block, "aa", None)):
        raise Unfusable("anti-aliased downsampling is not fused")


def read_timm_inverted_residual(block: nn.Module) -> Layers:
    _timm_common(block)
    act, dw_act = _timm_bn_act(block.bn1), _timm_bn_act(block.bn2)
    if act is None or act != dw_act or _timm_bn_act(block.bn3) is not None:
        raise Unfusable("the expand and depthwise layers must share one activation and the projection have none")
    se, se_act, gate = _timm_se(block)
    return Layers(expand=(block.conv_pw, block.bn1), depthwise=(block.conv_dw, block.bn2), se=se,
                  project=(block.conv_pwl, block.bn3), activation=act, se_activation=se_act, se_gate=gate,
                  same_padding=_timm_same(block.conv_dw), residual=bool(block.has_skip))


def read_timm_depthwise_separable(block: nn.Module) -> Layers:
    _timm_common(block)
    act = _timm_bn_act(block.bn1)
    if act is None or _timm_bn_act(block.bn2) is not None:
        raise Unfusable("the depthwise layer needs an activation and the projection none (pw_act)")
    se, se_act, gate = _timm_se(block)
    return Layers(expand=None, depthwise=(block.conv_dw, block.bn1), se=se, project=(block.conv_pw, block.bn2),
                  activation=act, se_activation=se_act, se_gate=gate, same_padding=_timm_same(block.conv_dw),
                  residual=bool(block.has_skip))


READERS: dict[str, Callable[[nn.Module], Layers]] = {
    "torchvision.models.mobilenetv3.InvertedResidual": read_torchvision_block,
    "torchvision.models.efficientnet.MBConv": read_torchvision_block,
    "torchvision.models.mnasnet._InvertedResidual": read_torchvision_mnasnet,
    "timm.models._efficientnet_blocks.InvertedResidual": read_timm_inverted_residual,
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": read_timm_depthwise_separable,
}


def base_class_path(m: nn.Module) -> str:
    """The class path of ``m``'s original class (the base of a fused one)."""
    cls = type(m)
    base = getattr(cls, "_fused_base", cls)
    return f"{base.__module__}.{base.__qualname__}"


def read_layers(block: nn.Module) -> Layers:
    """The block's layers, for a class this module knows; Unfusable otherwise."""
    reader = READERS.get(base_class_path(block))
    if reader is None:
        raise Unfusable(f"{base_class_path(block)} is not a supported block")
    try:
        return reader(block)
    except AttributeError as e:  # a subclass or a changed layout without the expected layers
        raise Unfusable(f"unexpected layout: {e}") from e


def fold_family_block(block: nn.Module) -> tuple:
    """(spec, folded weights, SE weights) of a supported block, for its device's kernel."""
    layers = read_layers(block)
    spec = spec_of(layers)
    with torch.no_grad():
        weights, se = fold_layers(layers)
    return spec, weights, se
