"""Dispatch, decided in one place: what a fused module's forward runs, and which back end can run
which input and why not. "auto" takes the first back end that can; an explicit choice that cannot
raises one error naming it and the reason (never a silent fallback)."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from . import _extension
from . import triton as _triton
from .spec import BlockSpec

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")

# A route that is not a back end: the module's own PyTorch layers (torchvision's exact unfused
# math), for training, autograd and ONNX export (which then sees only standard operators).
UNFUSED = "unfused"


def _query_kernels() -> dict[str, bool]:
    if not _extension.extension_loaded():
        return {"CPU": False, "CUDA": False}
    return {key: torch._C._dispatch_has_kernel_for_dispatch_key("mnv2_fused::inverted_residual", key)
            for key in ("CPU", "CUDA")}


# Looked up once at import: the answer cannot change, and torch.compile cannot trace the query.
_KERNELS = _query_kernels()


def has_kernel(dispatch_key: str) -> bool:
    """Whether the compiled extension registered a kernel for "CPU" or "CUDA"."""
    return _KERNELS[dispatch_key]


def cpu_kernel_runs(x: torch.Tensor) -> bool:
    """Whether the CPU kernels can run x (float32 CPU tensors)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and _KERNELS["CPU"]


# Each reason takes the input and the block's spec (None: MobileNetV2's block).
def _cpu_reason(x: torch.Tensor, spec: Optional[BlockSpec]) -> Optional[str]:
    if x.device.type != "cpu":
        return f"it runs on CPU tensors, the input is on {x.device}"
    if not has_kernel("CPU"):
        return "the compiled extension mnv2_fused._C is not loaded (rebuild the package)"
    if x.dtype != torch.float32:
        return f"it supports float32 only, the input is {x.dtype}"
    return None


def _cuda_reason(x: torch.Tensor, spec: Optional[BlockSpec]) -> Optional[str]:
    differs = spec.differs_from_mobilenet_v2() if spec is not None else []
    if differs:
        return ("the CUDA kernel computes MobileNetV2's block (3x3 depthwise, ReLU6, no dilation, no "
                f"squeeze-and-excite); this block has {', '.join(differs)}")
    if x.device.type != "cuda":
        return f"it runs on CUDA tensors, the input is on {x.device}"
    if not has_kernel("CUDA"):
        return "this build of mnv2_fused has no CUDA kernel (built without a CUDA toolkit, or MNV2_FUSED_BUILD_CUDA=0)"
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"it supports float32, float16 and bfloat16, the input is {x.dtype}"
    return None


def _triton_reason(x: torch.Tensor, spec: Optional[BlockSpec]) -> Optional[str]:
    if not _triton.AVAILABLE:
        return "the triton package is not installed"
    if x.device.type == "cpu" and not _triton.INTERPRETER:
        return "Triton needs a GPU, or its interpreter (set TRITON_INTERPRET=1 before importing triton) for CPU tensors"
    if x.device.type not in ("cpu", "cuda"):
        return f"it runs on CUDA tensors, the input is on {x.device}"
    # The interpreter has no bf16 arithmetic.
    allowed = (torch.float32, torch.float16) if x.device.type == "cpu" else (torch.float32, torch.float16, torch.bfloat16)
    if x.dtype not in allowed:
        return f"it supports {', '.join(str(d) for d in allowed)} on {x.device.type}, the input is {x.dtype}"
    return None


def _reference_reason(x: torch.Tensor, spec: Optional[BlockSpec]) -> Optional[str]:
    return None


REASONS: dict[str, Callable[[torch.Tensor, Optional[BlockSpec]], Optional[str]]] = {
    "cpu": _cpu_reason,
    "cuda": _cuda_reason,
    "triton": _triton_reason,
    "reference": _reference_reason,
}

# "auto" prefers the compiled kernels; Triton on CUDA only after the CUDA kernel, and never for CPU
# tensors (the interpreter is for tests).
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"mnv2_fused: unknown backend {backend!r}; expected one of {BACKENDS}")


def why_not(backend: str, x: torch.Tensor, spec: Optional[BlockSpec] = None) -> Optional[str]:
    """None when ``backend`` can run input x through a block of ``spec`` (None: MobileNetV2's),
    else the reason it cannot."""
    check_backend_name(backend)
    if backend == "auto":
        return None
    return REASONS[backend](x, spec)


def select_backend(backend: str, x: torch.Tensor, spec: Optional[BlockSpec] = None) -> str:
    """The concrete back end that will run x through a block of ``spec`` (None: MobileNetV2's): an
    explicit one if it can, else a RuntimeError."""
    check_backend_name(backend)
    if backend == "auto":
        for name in _AUTO_ORDER.get(x.device.type, ("reference",)):
            if REASONS[name](x, spec) is None:
                return name
        return "reference"
    reason = REASONS[backend](x, spec)
    if reason is not None:
        raise RuntimeError(f"mnv2_fused: backend={backend!r} cannot run this input: {reason}")
    return backend


def needs_unfused(x: torch.Tensor, training: bool, parameters: Callable[[], Iterable[torch.Tensor]]) -> bool:
    """Whether a fused module must run its own PyTorch layers: training, a gradient to compute
    (none of the fused ops has a backward), or an ONNX export (standard operators only)."""
    if training or torch.onnx.is_in_onnx_export():
        return True
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in parameters()))


def route(backend: str, x: torch.Tensor, training: bool, parameters: Callable[[], Iterable[torch.Tensor]],
          spec: Optional[BlockSpec] = None) -> str:
    """The one decision of a fused block's forward: UNFUSED, or the back end that runs x."""
    return UNFUSED if needs_unfused(x, training, parameters) else select_backend(backend, x, spec)


def network_route(block_backends: list[str], x: torch.Tensor, training: bool,
                  parameters: Callable[[], Iterable[torch.Tensor]]) -> str:
    """The one decision of a fused network's forward: UNFUSED; "network" when every stage runs on
    the CPU kernels (one call into the library for the whole forward); else "stages", each block on
    its own back end, the stem and head on the CPU kernels when the first block's back end is."""
    if needs_unfused(x, training, parameters):
        return UNFUSED
    if all(b in ("auto", "cpu") for b in block_backends) and cpu_kernel_runs(x):
        return "network"
    return "stages"


def may_bind(chosen: str) -> bool:
    """Whether later forwards whose input is like this one (the C++ call checks that) may skip the
    decision and go straight to C++: the CPU kernels, outside compilation and autograd."""
    return (chosen in ("cpu", "network") and _extension.extension_loaded() and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling())
