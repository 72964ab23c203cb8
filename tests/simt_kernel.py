"""The CUDA kernel's own source, compiled as host C++ against the SIMT emulation (tests/simt/) and
called through ctypes: how the tests run the CUDA kernel on a machine without a GPU."""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from typing import NamedTuple, Optional

import torch

from mnv2_fused.reference import FoldedWeights, conv_out, unpacked

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = [os.path.join(HERE, "simt", "emulated_kernel.cpp"), os.path.join(HERE, "simt", "simt_emulation.h"),
           os.path.join(ROOT, "csrc", "cuda", "inverted_residual_kernel.cuh"),
           os.path.join(ROOT, "csrc", "cuda", "tc_plan.h"), os.path.join(ROOT, "csrc", "cuda", "simt.h"),
           os.path.join(ROOT, "csrc", "layout.h")]
KERNEL_SOURCE = SOURCES[2]

# An H200: 132 SMs, 227 KiB of shared memory per block.
H200_SMS, H200_SMEM = 132, 227 * 1024
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
ORDERS = {"shuffle": 0, "forward": 1, "reverse": 2}


def cuda_include_dir() -> Optional[str]:
    """The CUDA toolkit's headers (for the host implementations of __half and __nv_bfloat16)."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    roots.append("/usr/local/cuda")
    for root in roots:
        if root and os.path.isfile(os.path.join(root, "include", "cuda_fp16.h")):
            return os.path.join(root, "include")
    return None


def build(kernel_source: str = KERNEL_SOURCE, tag: str = "") -> ctypes.CDLL:
    """Compiles the emulated kernel (kernel_source in place of the real one, for mutation tests)
    into build/, once per content."""
    include = cuda_include_dir()
    if include is None:
        raise FileNotFoundError("no CUDA toolkit headers (cuda_fp16.h): set CUDA_HOME")
    digest = hashlib.sha256()
    for path in SOURCES[:2] + [kernel_source] + SOURCES[3:]:
        with open(path, "rb") as f:
            digest.update(f.read())
    out_dir = os.path.join(ROOT, "build", "simt")
    os.makedirs(out_dir, exist_ok=True)
    lib = os.path.join(out_dir, f"emulated{tag}-{digest.hexdigest()[:16]}.so")
    if not os.path.exists(lib):
        defines = [f"-DMNV2_KERNEL_SOURCE=\"{kernel_source}\""] if kernel_source != KERNEL_SOURCE else []
        cmd = ["g++", "-std=c++20", "-O2", "-fPIC", "-shared", "-Wall", "-Wno-attributes", "-Wno-unknown-pragmas",
               f"-I{include}", f"-I{os.path.join(HERE, 'simt')}", f"-I{os.path.join(ROOT, 'csrc', 'cuda')}",
               *defines, SOURCES[0], "-o", lib + ".tmp", "-pthread"]
        built = subprocess.run(cmd, capture_output=True, text=True)
        if built.returncode != 0:
            raise RuntimeError(f"compiling the emulated kernel failed:\n{built.stderr[-4000:]}")
        os.replace(lib + ".tmp", lib)
    dll = ctypes.CDLL(lib)
    dll.mnv2_emulated_inverted_residual.restype = ctypes.c_char_p
    return dll


class Plan(NamedTuple):
    th: int
    tw: int
    hc: int
    chunks: int
    splits: int
    cout_part: int
    cout_parts: int
    smem_bytes: int
    vec_x: int  # rows staged with 16-byte copies
    vec_we: int
    vec_wp: int


class EmulationError(RuntimeError):
    pass


def run(dll: ctypes.CDLL, x: torch.Tensor, weights: FoldedWeights, stride: int, residual: bool,
        sm_count: int = H200_SMS, max_smem: int = H200_SMEM, order: str = "shuffle", seed: int = 1,
        skip_barrier_line: int = -1, plan_only: bool = False) -> tuple[torch.Tensor, Plan]:
    """The CUDA kernel's output for x (any layout; NCHW view of an NHWC result), and its plan
    (with plan_only, the plan alone: x may then be a meta tensor of the shape to plan for)."""
    w = unpacked(weights)
    n, cin, h, wd = x.shape
    hidden, cout = w.w_dw.shape[0], w.b_proj.shape[0]
    if plan_only:
        x = torch.empty(0, dtype=x.dtype)
    xn = x.permute(0, 2, 3, 1).contiguous() if x.dim() == 4 else x  # NHWC, as the launcher hands it over
    y = torch.full((0,) if plan_only else (n, conv_out(h, stride), conv_out(wd, stride), cout),
                   float("nan"), dtype=x.dtype)
    expand = w.w_expand is not None
    tensors = [w.w_expand if expand else w.w_dw, w.b_expand if expand else w.b_dw, w.w_dw.reshape(hidden, 9),
               w.b_dw, w.w_proj, w.b_proj]
    tensors = [t.to(x.dtype).contiguous() for t in tensors]
    dims = (ctypes.c_int64 * 9)(n, cin, h, wd, hidden, cout, stride, int(expand), int(residual))
    options = (ctypes.c_int64 * 6)(sm_count, max_smem, ORDERS[order], seed, skip_barrier_line, int(not plan_only))
    plan = (ctypes.c_int64 * 11)()
    err = dll.mnv2_emulated_inverted_residual(DTYPES[x.dtype], ctypes.c_void_p(xn.data_ptr()),
                                              *[ctypes.c_void_p(t.data_ptr()) for t in tensors],
                                              ctypes.c_void_p(y.data_ptr()), dims, options, plan)
    if err is not None:
        raise EmulationError(err.decode())
    return (y if plan_only else y.permute(0, 3, 1, 2)), Plan(*plan)
