"""Fuse the inverted-residual blocks inside an existing model, in place, and say what was fused."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from .backends import check_backend_name
from .families import (
    READERS,
    Unfusable,
    base_class_path,
    class_path,
    read_layers,
    spec_of,
)
from .module import FusedInvertedResidual, unfusable_reason

logger = logging.getLogger("mnv2_fused")


def _is_mobilenet_v2_block(m: nn.Module) -> bool:
    # Checked by name so that importing mnv2_fused never needs torchvision. Other classes named
    # InvertedResidual (torchvision's MobileNetV3, timm) have other layouts.
    return class_path(m) == "torchvision.models.mobilenetv2.InvertedResidual"


# Blocks of the family that no reader covers, by class name: named in the report as not supported.
_FAMILY_NAMES = ("InvertedResidual", "MBConv", "DepthwiseSeparable", "EdgeResidual", "CondConv")


def _is_fused(m: nn.Module) -> bool:
    from .family_block import FusedFamilyBlock

    return isinstance(m, (FusedInvertedResidual, FusedFamilyBlock))


def _is_candidate(m: nn.Module) -> bool:
    """A block of the inverted-residual family that a caller may expect to be fused."""
    return (any(name in type(m).__name__ for name in _FAMILY_NAMES) or base_class_path(m) in READERS) \
        and not _is_fused(m)


def _family_reason(m: nn.Module) -> Optional[str]:
    """None when a reader covers m and its layers fit the spec, else why not."""
    try:
        spec_of(read_layers(m))
    except Unfusable as e:
        return str(e)
    return None


def _why_unfused(m: nn.Module) -> str:
    if _is_mobilenet_v2_block(m):
        return unfusable_reason(m) or "not converted (call convert)"
    if base_class_path(m) in READERS:
        return _family_reason(m) or "not converted (call convert)"
    return f"{class_path(m)} is not supported"


@dataclass
class FusionReport:
    """What runs fused in a model: the fused blocks' names, whether a MobileNetV2's stem and head
    are fused too, the other networks' fused head and classifier layers, and every other
    inverted-residual block with the reason it is not."""

    fused_blocks: list[str] = field(default_factory=list)
    whole_network: bool = False
    unfused: dict[str, str] = field(default_factory=dict)
    fused_layers: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"mnv2_fused: {len(self.fused_blocks)} fused block(s)"
                 + ("; stem and head fused too (whole network)" if self.whole_network else "")
                 + (f"; head and classifier layers fused: {', '.join(self.fused_layers)}" if self.fused_layers else "")]
        lines += [f"  left unfused: {name or '(the model itself)'}: {why}" for name, why in self.unfused.items()]
        return "\n".join(lines)


def fusion_report(model: nn.Module) -> FusionReport:
    """What runs fused in ``model`` (see FusionReport)."""
    from .network_ends import FusedLayer

    report = FusionReport()
    for name, m in model.named_modules():
        if _is_fused(m):
            report.fused_blocks.append(name)
        elif isinstance(m, FusedLayer):
            report.fused_layers.append(name)
        elif _is_candidate(m):
            report.unfused[name] = _why_unfused(m)
    if type(model).__name__ == "FusedMobileNetV2":
        report.whole_network = True
    return report


def convert(model: nn.Module, backend: str = "auto", whole_network: bool = True) -> nn.Module:
    """Replace every torchvision MobileNetV2 InvertedResidual inside ``model``, in place, keeping
    its weights (the same tensors) and state_dict keys; returns ``model``. A bare block is returned
    converted. Blocks that cannot be fused (other layouts, other families) are left as they are;
    ``fusion_report(model)`` lists both, and convert logs it (logger "mnv2_fused", level INFO).

    For a torchvision MobileNetV2, ``whole_network`` also fuses the stem with the first block and
    the last 1x1 convolution with the average pool (see FusedMobileNetV2); the model's class
    becomes FusedMobileNetV2, a subclass, and everything else about it stays as it was. For a
    torchvision EfficientNet or MobileNetV3 (backend "auto" or "cpu") it fuses the last 1x1
    convolution with its BN and activation, and the classifier's Linear layers, in place (see
    network_ends.py).
    """
    from .family_block import fuse_in_place

    check_backend_name(backend)
    if _is_mobilenet_v2_block(model):
        return FusedInvertedResidual.from_block(model, backend) if unfusable_reason(model) is None else model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_mobilenet_v2_block(child) and unfusable_reason(child) is None:
                setattr(parent, name, FusedInvertedResidual.from_block(child, backend))
    for m in list(model.modules()):
        if base_class_path(m) in READERS and _family_reason(m) is None:
            fuse_in_place(m, backend)
    if whole_network and backend in ("auto", "cpu"):
        from .network_ends import fuse_network_ends

        fuse_network_ends(model, backend)
    if whole_network and class_path(model) == "torchvision.models.mobilenetv2.MobileNetV2":
        from .network import (
            fuse_network,  # imports torchvision, which the model's owner has
        )

        fuse_network(model)
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s", fusion_report(model))
    return model
