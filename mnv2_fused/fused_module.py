"""What every fused block module has: the back end it runs on, its Bound (folded weights and the
bound C++ call), and the forward that tries the bound call first. FusedInvertedResidual and the
other families' fused blocks (family_block.py) build on it; each provides _unfused (its own
layers' forward) and _fused_dispatch (the full path: checks, route, fold, kernel)."""
from __future__ import annotations

from typing import Any, Callable

import torch

from . import backends
from .bound import Bound, note_change, refresh_after_load


class FusedModule:
    """Mixin for nn.Module subclasses; comes before nn.Module (or the original class) in the bases."""

    __jit_unused_properties__ = ["backend"]

    def _init_fused(self, fold: Callable[..., Any], backend: str) -> None:
        self._fused_bound = Bound(fold)
        self.backend = backend
        self.register_load_state_dict_post_hook(refresh_after_load)

    @property
    def backend(self) -> str:
        """The back end this block runs on at inference: "auto", "cpu", "cuda", "triton" or
        "reference" (validated on assignment)."""
        return self._fused_backend

    @backend.setter
    def backend(self, value: str) -> None:
        backends.check_backend_name(value)
        self._fused_backend = value
        note_change()  # a bound call (the block's, a converted network's) depends on it

    def refresh(self) -> None:
        """Drop the cached folded weights; the next inference call folds BN again."""
        self._fused_bound.clear()

    def _apply(self, fn, *args, **kwargs):
        self.refresh()
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch only
            return self._unfused(x)
        y = self._fused_bound.run(x, self.training)
        return y if y is not None else self._fused_dispatch(x)
