"""Loads the compiled library that registers torch.ops.mnv2_fused.*, with a clear error if it is missing."""
from __future__ import annotations

import importlib

import torch  # noqa: F401  -- loads libtorch/libc10, which the extension links against

_load_error: Exception | None = None

try:
    importlib.import_module("mnv2_fused._C")
except ImportError as e:  # pragma: no cover - depends on how the package was installed
    _load_error = e


def require_extension() -> None:
    """Raise a RuntimeError that says how to build the extension when it failed to load."""
    if _load_error is not None:
        raise RuntimeError(
            "mnv2_fused: the compiled extension mnv2_fused._C could not be loaded "
            f"({_load_error}). Build it against the installed torch with "
            "`pip install --no-build-isolation .`; backend='reference' works without it."
        ) from _load_error


def extension_loaded() -> bool:
    return _load_error is None
