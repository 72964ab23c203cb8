"""BN-folded weights cached per module, refolded only when a parameter or buffer changed."""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn.modules.module import (register_module_buffer_registration_hook,
                                     register_module_module_registration_hook,
                                     register_module_parameter_registration_hook)

from ._extension import extension_loaded

# How many parameters, buffers and submodules have been registered or assigned on any module of
# the process, plus how many times a fused block's backend was set. While it stands still no
# cache can have seen a replacement, so a forward needs no walk of its module tree. (Global hooks:
# one counter increment per registration anywhere.)
_changes = 0


def changes() -> int:
    """The structural-change counter above."""
    return _changes


def note_change(*_args) -> None:
    """Counts a structural change (a registration hook, or a setting a fused forward depends on)."""
    global _changes
    _changes += 1


for _register in (register_module_parameter_registration_hook, register_module_buffer_registration_hook,
                  register_module_module_registration_hook):
    _register(note_change)


class FastCall:
    """A module's inference bound to one call into C++ (mnv2_fused._C.NetworkCall or BlockCall)
    and the value of changes() it is valid for, as one pair: one attribute read gets both,
    whatever other threads do. Copies and pickles start empty: the next forward binds again.

    A forward right after another finds its Python objects evicted from the caches by the
    kernel's weights and activations, so every Python step costs a cache miss: the fast path
    skips the module-tree checks (changes() vouches for them) and the argument parsing of the
    weights (held in C++), and checks the input and the weights' versions in C++."""

    def __init__(self) -> None:
        self.state: tuple = (None, -1)

    def clear(self) -> None:
        self.state = (None, -1)

    def bind(self, call: Any, changes_seen: int) -> None:
        """Binds ``call``, valid while changes() still reads ``changes_seen`` (read before the
        checks that made it valid)."""
        self.state = (call, changes_seen)

    def run(self, x: torch.Tensor, training: bool) -> Optional[torch.Tensor]:
        """The bound call's output for x, or None when the module must take its checked path:
        nothing bound, something changed since, training, gradients enabled, compiling, or an
        input the C++ side declines."""
        call, changes_seen = self.state
        if (call is None or changes_seen != _changes or training or torch.is_grad_enabled()
                or torch.compiler.is_compiling()):
            return None
        return call(x)

    def __deepcopy__(self, memo) -> "FastCall":
        return FastCall()

    def __reduce__(self):
        return FastCall, ()


class _Versions:
    """The version counters of some tensors, compared in C++ when the extension is loaded: about a
    microsecond for a whole network, where reading ~300 versions from Python right after a forward
    (its objects evicted from the caches) costs tens."""

    def __init__(self, tensors: list) -> None:
        self.snapshot = None
        if extension_loaded():
            from . import _C

            self.snapshot = _C.VersionSnapshot(tensors)
        else:
            self._tensors, self._versions = tensors, [t._version for t in tensors]

    def unchanged(self) -> bool:
        if self.snapshot is not None:
            return self.snapshot.unchanged()
        return self._versions == [t._version for t in self._tensors]


class FoldCache:
    """Holds ``fold(*modules)`` for inference until a tensor of ``modules`` changes.

    A change is an in-place write (the tensor's version counter moves) or a new tensor or submodule
    put in place of an old one (``.to()``, ``load_state_dict`` with assign, attribute assignment).
    Edits through ``.data``, ``torch.utils.swap_tensors`` or direct writes to a module's
    ``_parameters`` / ``_buffers`` / ``_modules`` dicts bypass both: call ``clear()`` after them.
    A check costs a few microseconds: the identities are compared only after some registration
    happened somewhere in the process, the versions in C++.
    """

    def __init__(self, fold: Callable[..., Any]) -> None:
        self._fold = fold
        self._value: Any = None
        self._watch: Optional[list] = None
        self._seen = -1  # _changes when the identities were last compared
        self._versions: Optional[_Versions] = None
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
        if watch is None or self._versions is None:
            return False
        if self._seen != _changes:
            seen = _changes  # read first: a change during the walk is checked next time
            for d, k, v in watch:
                if d.get(k) is not v:
                    return False
            self._seen = seen
        return self._versions.unchanged()

    def get(self, *modules: nn.Module) -> Any:
        return self.get_with_snapshot(*modules)[0]

    def get_with_snapshot(self, *modules: nn.Module) -> tuple:
        """The cached value, and the C++ VersionSnapshot of the tensors it was folded from (None
        without the extension, or while compiling), read together: whoever runs the value outside
        Python checks the snapshot instead of calling get()."""
        if torch.compiler.is_compiling():
            return self._fold(*modules), None  # traced into the graph; no Python-side state
        with self._lock:
            if not self._current():
                # Versions are read before folding: a write racing with the fold leaves them behind,
                # so the next call folds again instead of keeping a half-updated fold.
                self._seen = _changes
                self._watch = self._watch_list(modules)
                self._versions = _Versions([v for _, _, v in self._watch if isinstance(v, torch.Tensor)])
                with torch.no_grad():
                    self._value = self._fold(*modules)
            return self._value, self._versions.snapshot

    # Copies and pickles start empty: the lock cannot be copied and the weights refold cheaply.
    def __getstate__(self) -> dict:
        return {"_fold": self._fold}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["_fold"])

    def __deepcopy__(self, memo) -> "FoldCache":
        return FoldCache(self._fold)
