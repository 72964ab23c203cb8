"""Which back end can run which input, and why not: "auto" takes the first that can, an explicit
choice that cannot raises one error naming it and the reason (never a silent fallback)."""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from . import _extension

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")


def _query_kernels() -> dict[str, bool]:
    if not _extension.extension_loaded():
        return {"CPU": False, "CUDA": False}
    return {key: torch._C._dispatch_has_kernel_for_dispatch_key("mnv2_fused::inverted_residual", key)
            for key in ("CPU", "CUDA")}


# Looked up once at import: the answer cannot change, and torch.compile cannot trace the query.
_KERNELS = _query_kernels()


def _has_kernel(dispatch_key: str) -> bool:
    return _KERNELS[dispatch_key]


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _cpu_reason(x: torch.Tensor) -> Optional[str]:
    if x.device.type != "cpu":
        return f"it runs on CPU tensors, the input is on {x.device}"
    if not _has_kernel("CPU"):
        return "the compiled extension mnv2_fused._C is not loaded (rebuild the package)"
    if x.dtype != torch.float32:
        return f"it supports float32 only, the input is {x.dtype}"
    return None


def _cuda_reason(x: torch.Tensor) -> Optional[str]:
    if x.device.type != "cuda":
        return f"it runs on CUDA tensors, the input is on {x.device}"
    if not _has_kernel("CUDA"):
        return "this build of mnv2_fused has no CUDA kernel (built without a CUDA toolkit, or MNV2_FUSED_BUILD_CUDA=0)"
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"it supports float32, float16 and bfloat16, the input is {x.dtype}"
    return None


def _triton_reason(x: torch.Tensor) -> Optional[str]:
    from .triton import triton_available

    if not triton_available():
        return "the triton package is not installed"
    if x.device.type == "cpu" and not triton_interpreter_enabled():
        return "Triton needs a GPU, or its interpreter (set TRITON_INTERPRET=1 before importing triton) for CPU tensors"
    if x.device.type not in ("cpu", "cuda"):
        return f"it runs on CUDA tensors, the input is on {x.device}"
    allowed = (torch.float32, torch.float16) if x.device.type == "cpu" else (torch.float32, torch.float16, torch.bfloat16)
    if x.dtype not in allowed:
        return f"it supports {', '.join(str(d) for d in allowed)} on {x.device.type}, the input is {x.dtype}"
    return None


def _reference_reason(x: torch.Tensor) -> Optional[str]:
    return None


REASONS: dict[str, Callable[[torch.Tensor], Optional[str]]] = {
    "cpu": _cpu_reason,
    "cuda": _cuda_reason,
    "triton": _triton_reason,
    "reference": _reference_reason,
}

# "auto" prefers the compiled kernels; Triton on CUDA only after the CUDA kernel (until GPU
# measurements say otherwise), and never for CPU tensors (the interpreter is for tests).
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"mnv2_fused: unknown backend {backend!r}; expected one of {BACKENDS}")


def why_not(backend: str, x: torch.Tensor) -> Optional[str]:
    """None when `backend` can run input x, else the reason it cannot."""
    check_backend_name(backend)
    if backend == "auto":
        return None
    return REASONS[backend](x)


def select_backend(backend: str, x: torch.Tensor) -> str:
    """The concrete back end that will run x: an explicit one if it can, else a RuntimeError."""
    check_backend_name(backend)
    if backend == "auto":
        for name in _AUTO_ORDER.get(x.device.type, ("reference",)):
            if REASONS[name](x) is None:
                return name
        return "reference"
    reason = REASONS[backend](x)
    if reason is not None:
        raise RuntimeError(f"mnv2_fused: backend={backend!r} cannot run this input: {reason}")
    return backend
