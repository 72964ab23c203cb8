"""What every fused module has: the back end it runs on, its Bound (folded weights and the bound
C++ call), and the forward that tries the bound call first. FusedInvertedResidual, the other
families' fused blocks (family_block.py) and the fused head and classifier layers
(network_ends.py) build on it; each provides _unfused (its own layers' forward) and
_fused_dispatch (the full path: checks, route, fold, kernel). The latter two are made as fused
subclasses of the original classes (fused_subclass)."""
from __future__ import annotations

import types
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


class FusedSubclass(FusedModule):
    """The mixin of a fused subclass made by fused_subclass: it comes first in the bases, the
    original class second, so only forward changes."""

    _fused_base: type  # the original class
    _fused_mixin: type  # the mixin (a subclass of this one) the fused class was made with

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return f"{base}, backend={self.backend!r}" if base else f"backend={self.backend!r}"

    def __reduce_ex__(self, protocol):
        # Pickled as the original class plus state: the subclass is made again on loading.
        return rebuild_fused, (self._fused_base, self._fused_mixin), self.__getstate__()


def _renamed(fn, name: str):
    """fn under another name: TorchScript compiles a called method under its function's __name__,
    and the original forward must not clash with the fused one."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__annotations__, copy.__doc__ = fn.__kwdefaults__, fn.__annotations__, fn.__doc__
    return copy


_SUBCLASSES: dict[tuple[type, type], type] = {}


def fused_subclass(base: type, mixin: type, module: str) -> type:
    """The subclass of ``base`` with ``mixin`` (a FusedSubclass) first in its bases, named
    Fused<base> in ``module``; the original forward becomes ``_unfused``. Made once per pair."""
    key = (base, mixin)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"Fused{base.__name__}", (mixin, base),
                                {"_fused_base": base, "_fused_mixin": mixin,
                                 "_unfused": _renamed(base.forward, "_unfused"), "__module__": module})
    return _SUBCLASSES[key]


def rebuild_fused(base: type, mixin: type) -> Any:
    """An empty instance of the fused subclass, for unpickling (the state follows)."""
    cls = fused_subclass(base, mixin, mixin.__module__)
    return cls.__new__(cls)
