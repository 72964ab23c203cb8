"""A fused module's inference state, one object per module: the BN-folded weights, what they were
folded from, and the call into C++ that later forwards go through.

A forward right after another finds its Python objects evicted from the caches by the kernels'
megabytes of weights and activations, so every Python step costs a cache miss. Once bound, a
forward is one attribute read, one generation compare and one C++ call, which checks the input and
the weights' version counters itself (mnv2_fused._C.OpCall / NetworkCall).

What is noticed:
- in-place writes to a tensor the weights were folded from (its version counter moves);
- a tensor or submodule put in place of another (``.to()``, attribute assignment,
  ``load_state_dict(assign=True)``): torch's global registration hooks move the generation below,
  and the next forward compares identities again;
- ``load_state_dict``: the fused modules refresh themselves after it, which also covers tensors made
  under ``torch.inference_mode()`` (they have no version counter).
Edits that bypass all three (``.data``, ``torch.utils.swap_tensors``, writes to a module's
``_parameters`` dict, in-place edits of inference tensors) need ``refresh()`` on the module.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

from ._extension import extension_loaded

# How many parameters, buffers and submodules have been registered or assigned on any module of the
# process, plus how many times a fused block's backend was set. While it stands still, no module
# tree can have had a tensor or submodule replaced, so a forward needs no walk of it.
_generation = 0


def note_change(*_args) -> None:
    """Moves the generation: a registration (the hooks below), or a setting a fused forward depends on."""
    global _generation
    _generation += 1


for _register in (register_module_parameter_registration_hook, register_module_buffer_registration_hook,
                  register_module_module_registration_hook):
    _register(note_change)


def _watch_list(modules) -> list:
    """(owner dict, key, object) for every submodule, parameter and buffer under ``modules``:
    identity checks against these see replacements without walking the trees again."""
    watch = []
    for root in modules:
        for m in root.modules():
            for d in (m._modules, m._parameters, m._buffers):
                watch.extend((d, k, v) for k, v in d.items() if v is not None)
    return watch


def _version_snapshot(tensors: list) -> Any:
    """Something with ``unchanged()``: whether any of ``tensors`` was written in place since. In C++
    when the extension is loaded (a microsecond for a whole network). Inference tensors have no
    version counter and are left out (see the module docstring)."""
    tracked = [t for t in tensors if not t.is_inference()]
    if extension_loaded():
        from . import _C

        return _C.VersionSnapshot(tracked)
    return _PythonVersions(tracked)


class _PythonVersions:
    def __init__(self, tensors: list) -> None:
        self._tensors, self._versions = tensors, [t._version for t in tensors]

    def unchanged(self) -> bool:
        return self._versions == [t._version for t in self._tensors]


class Bound:
    """``fold(*modules)`` cached for inference, and the C++ call bound to it.

    Copies and pickles start empty: the lock cannot be copied, the weights refold cheaply.
    """

    def __init__(self, fold: Callable[..., Any]) -> None:
        self._fold = fold
        self._lock = threading.Lock()
        self._value: Any = None
        self._watch: Optional[list] = None
        self._versions: Any = None
        self._checked = -1  # the generation at which the identities were last compared
        # The bound call and the generation it is valid for, as one pair: one read gets both,
        # whatever other threads do.
        self._call: tuple = (None, -1)

    def clear(self) -> None:
        """Drops the folded weights and the bound call: the next forward folds again. Under the
        lock: a fold or a binding in another thread sees the weights and versions both or neither."""
        with self._lock:
            self._call = (None, -1)
            self._value = self._watch = self._versions = None
            self._checked = -1

    # -- the bound call ---------------------------------------------------------------------
    def run(self, x: Any, training: bool) -> Optional[torch.Tensor]:
        """The bound call's output for x, or None when the module must take its full path: nothing
        bound, anything registered since, training, compiling, or an input the C++ side declines
        (not a tensor like the one it was bound for, gradients enabled, a weight written since)."""
        call, generation = self._call
        if call is None or generation != _generation or training or torch.compiler.is_compiling():
            return None
        return call(x)

    def call(self) -> Any:
        """The bound C++ call (valid or not for the current generation), or None."""
        return self._call[0]

    def bind(self, make_call: Callable[[Any, Any], Any], generation: int) -> None:
        """Binds ``make_call(folded weights, their C++ version snapshot)``, read together, for
        forwards while the generation still reads ``generation`` (read before the checks that made
        the call valid)."""
        with self._lock:
            value, versions = self._value, self._versions
            if value is not None and versions is not None and extension_loaded():
                self._call = (make_call(value, versions), generation)

    # -- the folded weights -----------------------------------------------------------------
    def _current(self) -> bool:
        if self._watch is None:
            return False
        if self._checked != _generation:
            seen = _generation  # read first: a change during the walk is checked next time
            if any(d.get(k) is not v for d, k, v in self._watch):
                return False
            self._checked = seen
        return self._versions.unchanged()

    def weights(self, *modules: nn.Module) -> Any:
        """``fold(*modules)``, folded again only when a tensor or submodule of ``modules`` changed."""
        if torch.compiler.is_compiling():
            return self._fold(*modules)  # traced into the graph; no Python-side state
        with self._lock:
            if not self._current():
                # Versions are read before folding: a write racing with the fold leaves them
                # behind, so the next call folds again instead of keeping a half-updated fold. The
                # state is only set once the fold succeeded: a fold that raises leaves nothing
                # that passes for current.
                self._call = (None, -1)
                self._watch = None
                checked = _generation
                watch = _watch_list(modules)
                versions = _version_snapshot([v for _, _, v in watch if isinstance(v, torch.Tensor)])
                with torch.no_grad():
                    value = self._fold(*modules)
                self._value, self._watch, self._versions, self._checked = value, watch, versions, checked
            return self._value

    def rehome(self, old: Any, new: Any) -> None:
        """Holds ``new``, the same weights as the fold ``old`` in other memory, in its place while
        ``old`` is still the fold held; the call bound to ``old``'s tensors is dropped (the next
        forward binds ``new``'s), so that ``old``'s memory can go."""
        with self._lock:
            if self._value is old:
                self._value = new
                self._call = (None, -1)

    def __getstate__(self) -> dict:
        return {"_fold": self._fold}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["_fold"])

    def __deepcopy__(self, memo) -> "Bound":
        return Bound(self._fold)


def generation() -> int:
    """The current generation (see ``note_change``); read it before the checks a binding relies on."""
    return _generation


def refresh_after_load(module: nn.Module, _incompatible_keys) -> None:
    """load_state_dict post hook of the fused modules (a module-level function, so models pickle)."""
    module.refresh()
