"""Triton back end (GPU, or Triton's interpreter on the CPU when TRITON_INTERPRET=1).

Both facts below are read once, at import: Triton itself reads TRITON_INTERPRET when its kernels
are defined, and torch.compile cannot trace a package lookup inside a forward."""
from __future__ import annotations

import importlib.util
import os

# Whether the triton package is installed (the kernel module is imported only when it runs).
AVAILABLE: bool = importlib.util.find_spec("triton") is not None

# Whether Triton's interpreter runs the kernels (CPU tensors); set TRITON_INTERPRET=1 before import.
INTERPRETER: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def inverted_residual_triton(x, weights, stride, residual):
    from .inverted_residual import inverted_residual_triton as run

    return run(x, weights, stride, residual)


def mbconv_triton(x, weights, se, spec):
    from .inverted_residual import mbconv_triton as run

    return run(x, weights, se, spec)
