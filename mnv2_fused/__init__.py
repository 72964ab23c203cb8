"""mnv2_fused: MobileNetV2's inverted-residual block as one fused kernel.

    from mnv2_fused import FusedInvertedResidual, convert
    model = torchvision.models.mobilenet_v2(block=FusedInvertedResidual).eval()
    # or: model = convert(torchvision.models.mobilenet_v2().eval())
"""
from . import _extension
from .backends import BACKENDS, select_backend, why_not
from .convert import convert
from .module import FusedInvertedResidual
from .ops import inverted_residual
from .reference import FoldedWeights, fold_block, fold_bn, inverted_residual_reference

__all__ = [
    "BACKENDS",
    "FoldedWeights",
    "FusedInvertedResidual",
    "convert",
    "fold_block",
    "fold_bn",
    "inverted_residual",
    "inverted_residual_reference",
    "select_backend",
    "why_not",
]
__version__ = "0.1.0"
