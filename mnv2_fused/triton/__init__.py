"""Triton back end (GPU, or Triton's interpreter on the CPU when TRITON_INTERPRET=1)."""
from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def inverted_residual_triton(x, weights, stride, residual):
    from .inverted_residual import inverted_residual_triton as run

    return run(x, weights, stride, residual)
