"""BN-folded weights cached per module, refolded only when a parameter or buffer changed."""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import torch
from torch import nn


class FoldCache:
    """Holds ``fold(*modules)`` for inference until a tensor of ``modules`` changes.

    A change is an in-place write (the tensor's version counter moves) or a new tensor or submodule
    put in place of an old one (``.to()``, ``load_state_dict`` with assign, attribute assignment).
    Edits through ``.data`` bypass both: call ``clear()`` after them. Checking costs well under a
    microsecond per tensor, far less than walking the module tree each call.
    """

    def __init__(self, fold: Callable[..., Any]) -> None:
        self._fold = fold
        self._value: Any = None
        self._watch: Optional[list] = None
        self._tensors: list = []
        self._versions: Optional[list] = None
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._value = self._watch = self._versions = None

    @staticmethod
    def _watch_list(modules) -> list:
        # (owner dict, key, object) for every submodule, parameter and buffer: identity checks
        # against these see replacements without walking the tree again.
        watch = []
        for root in modules:
            for m in root.modules():
                for d in (m._modules, m._parameters, m._buffers):
                    watch.extend((d, k, v) for k, v in d.items() if v is not None)
        return watch

    def _current(self) -> bool:
        watch = self._watch
        if watch is None:
            return False
        for d, k, v in watch:
            if d.get(k) is not v:
                return False
        return self._versions == [t._version for t in self._tensors]

    def get(self, *modules: nn.Module) -> Any:
        if torch.compiler.is_compiling():
            return self._fold(*modules)  # traced into the graph; no Python-side state
        with self._lock:
            if not self._current():
                # Versions are read before folding: a write racing with the fold leaves them behind,
                # so the next call folds again instead of keeping a half-updated fold.
                self._watch = self._watch_list(modules)
                self._tensors = [v for _, _, v in self._watch if isinstance(v, torch.Tensor)]
                self._versions = [t._version for t in self._tensors]
                with torch.no_grad():
                    self._value = self._fold(*modules)
            return self._value

    # Copies and pickles start empty: the lock cannot be copied and the weights refold cheaply.
    def __getstate__(self) -> dict:
        return {"_fold": self._fold}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["_fold"])

    def __deepcopy__(self, memo) -> "FoldCache":
        return FoldCache(self._fold)
