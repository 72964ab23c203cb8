"""mnv2_fused: the inverted-residual block (MobileNetV2/V3, MnasNet, EfficientNet) as one fused kernel.

    from mnv2_fused import FusedInvertedResidual, convert
    model = torchvision.models.mobilenet_v2(block=FusedInvertedResidual).eval()
    # or: model = convert(torchvision.models.efficientnet_b0().eval())
"""
from . import _extension  # noqa: F401  -- loads the compiled ops
from .backends import BACKENDS, select_backend, why_not
from .convert import FusionReport, convert, fusion_report
from .family_block import fused_class
from .module import FusedInvertedResidual
from .ops import inverted_residual
from .reference import (
    FoldedWeights,
    fold_block,
    fold_bn,
    inverted_residual_reference,
    mbconv_reference,
)
from .spec import BlockSpec, SEWeights


def __getattr__(name):
    # FusedMobileNetV2 subclasses torchvision's MobileNetV2: imported on first use only, so that
    # mnv2_fused itself never needs torchvision.
    if name == "FusedMobileNetV2":
        from .network import FusedMobileNetV2

        return FusedMobileNetV2
    raise AttributeError(f"module 'mnv2_fused' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "BlockSpec",
    "SEWeights",
    "FoldedWeights",
    "FusedInvertedResidual",
    "FusedMobileNetV2",
    "FusionReport",
    "convert",
    "fold_block",
    "fold_bn",
    "fused_class",
    "fusion_report",
    "inverted_residual",
    "inverted_residual_reference",
    "mbconv_reference",
    "select_backend",
    "why_not",
]
__version__ = "0.1.0"
