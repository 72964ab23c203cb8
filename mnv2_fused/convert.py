"""Swap torchvision InvertedResidual blocks for fused ones inside an existing model."""
from __future__ import annotations

from torch import nn

from .backends import check_backend_name
from .module import FusedInvertedResidual


def _is_torchvision_block(m: nn.Module) -> bool:
    # Checked by name so that importing mnv2_fused never needs torchvision.
    cls = type(m)
    return cls.__name__ == "InvertedResidual" and cls.__module__.startswith("torchvision.")


def _is_torchvision_mobilenet_v2(m: nn.Module) -> bool:
    cls = type(m)
    return cls.__name__ == "MobileNetV2" and cls.__module__.startswith("torchvision.")


def convert(model: nn.Module, backend: str = "auto", whole_network: bool = True) -> nn.Module:
    """Replace every torchvision InvertedResidual inside ``model``, in place, keeping its weights
    (the same tensors) and state_dict keys; returns ``model``. A bare block is returned converted.

    For a torchvision MobileNetV2, ``whole_network`` also fuses the stem with the first block and
    the last 1x1 convolution with the average pool (see FusedMobileNetV2); the model's class
    becomes FusedMobileNetV2, a subclass, and everything else about it stays as it was.
    """
    check_backend_name(backend)
    if _is_torchvision_block(model):
        return FusedInvertedResidual.from_block(model, backend)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_torchvision_block(child):
                setattr(parent, name, FusedInvertedResidual.from_block(child, backend))
    if whole_network and _is_torchvision_mobilenet_v2(model):
        from .network import fuse_network  # imports torchvision, which the model's owner has

        fuse_network(model)
    return model
