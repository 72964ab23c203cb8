"""Blocks of the other families fused in place: the block's class becomes a subclass of its own
(FusedMBConv for torchvision's MBConv, and so on), so its attributes, submodules, state_dict keys
and isinstance checks stay as they were, and only forward changes. At inference it runs the fused
kernels on BN-folded weights; in training, with gradients, in ONNX export and in TorchScript it runs
the class's own forward. The subclasses also serve as drop-in classes with the original
constructors (``fused_class(MBConv)(...)``)."""
from __future__ import annotations

import torch
from torch import nn

from . import backends
from .bound import generation
from .families import Unfusable, fold_family_block, read_layers, spec_of
from .fused_module import FusedSubclass, fused_subclass, rebuild_fused
from .module import check_input
from .ops import run_mbconv
from .spec import op_arguments
from .tracing import fx_leaf_call, is_fx_proxy


class FusedFamilyBlock(FusedSubclass):
    """What the fused subclasses add; it comes first in their bases, the original class second."""

    def __init__(self, *args, backend: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)  # the original class's constructor: a drop-in
        spec_of(read_layers(self))
        self._init_fused(fold_family_block, backend)

    def _fused_dispatch(self, x: torch.Tensor) -> torch.Tensor:
        if is_fx_proxy(x):
            return fx_leaf_call(self, x, self._unfused)
        if backends.needs_unfused(x, self.training, self.parameters):
            return self._unfused(x)
        seen = generation()  # read before the checks a binding relies on
        try:
            spec, weights, se = self._fused_bound.weights(self)
        except Unfusable as e:  # a layer was replaced by one the kernels do not compute
            if self.backend != "auto":  # never a silent fallback from an explicit choice
                raise RuntimeError(f"mnv2_fused: backend={self.backend!r} cannot run this block: {e}") from e
            return self._unfused(x)
        in_channels = weights.w_expand.shape[1] if weights.w_expand is not None else weights.w_dw.shape[0]
        check_input(x, type(self).__name__, in_channels, weights.w_dw)
        chosen = backends.select_backend(self.backend, x, spec)
        if backends.may_bind(chosen):
            self._fused_bound.bind(lambda folded, versions: self._op_call(folded, versions, in_channels), seen)
        return run_mbconv(x, weights, se, spec, chosen)

    @staticmethod
    def _op_call(folded: tuple, versions, in_channels: int):
        from . import _C

        spec, w, se = folded
        se_args, tail = op_arguments(spec, se)
        return _C.OpCall(versions, "mnv2_fused::mbconv", in_channels,
                         [w.w_expand, w.b_expand, w.w_dw, w.b_dw, *se_args, w.w_proj, w.b_proj, *tail])


def fused_class(base: type) -> type:
    """The fused subclass of a supported block class (made once per class)."""
    return fused_subclass(base, FusedFamilyBlock, __name__)


def _rebuild(base: type) -> nn.Module:
    # How fused blocks pickled by earlier versions load.
    return rebuild_fused(base, FusedFamilyBlock)


def fuse_in_place(block: nn.Module, backend: str = "auto") -> nn.Module:
    """Makes ``block`` (a supported class, checked by its reader) fused, in place; Unfusable says
    why not otherwise."""
    spec_of(read_layers(block))
    if not isinstance(block, FusedFamilyBlock):
        block.__class__ = fused_class(type(block))
        block._init_fused(fold_family_block, backend)
    else:
        block.backend = backend
    return block
