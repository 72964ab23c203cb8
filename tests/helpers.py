"""The oracle (torchvision with randomized weights and BN statistics), inputs, and the one table
of tolerances every back end is held to."""
from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from mnv2_fused import FusedInvertedResidual
from mnv2_fused.bench.measure import rel_err
from mnv2_fused.bench.models import make_block, randomize, table2_blocks

__all__ = ["BACKEND_DTYPES", "HUGE_PAGE", "assert_within_terms", "check_block", "compiled_network_error", "device_of",
           "huge_pages_offered", "make_block", "make_input", "randomize_bn", "rel_err", "summed_terms", "table2_blocks",
           "within_tolerance"]

randomize_bn = randomize

GPU = torch.cuda.is_available()

HUGE_PAGE = 2 * 2**20  # bytes of a transparent huge page (csrc/cpu/huge_pages.h)


def huge_pages_offered() -> bool:
    """Whether the system's transparent huge pages honour an madvise (Linux: always or madvise)."""
    enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return enabled.exists() and "[never]" not in enabled.read_text()


def device_of(backend: str) -> str:
    """Where a back end's tensors live in these tests: Triton runs in its interpreter without a GPU."""
    if backend == "cuda" or (backend == "triton" and GPU):
        return "cuda"
    return "cpu"


def _param(backend, dtype, needs_gpu=False):
    import pytest

    marks = [pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")] if needs_gpu else []
    return pytest.param(backend, dtype, marks=marks, id=f"{backend}-{str(dtype).split('.')[-1]}")


# Every back end with every dtype it supports. The interpreter has no bf16 arithmetic, so Triton's
# bf16 needs a GPU.
BACKEND_DTYPES = [
    _param("cpu", torch.float32),
    _param("triton", torch.float32),
    _param("triton", torch.float16),
    _param("triton", torch.bfloat16, needs_gpu=True),
    _param("cuda", torch.float32, needs_gpu=True),
    _param("cuda", torch.float16, needs_gpu=True),
    _param("cuda", torch.bfloat16, needs_gpu=True),
]

# Relative error against the float64 oracle: at most the dtype's bound, or twice PyTorch's own
# error in that dtype where that is larger (a near-zero output loses digits to cancellation in any
# implementation), plus a floor for outputs PyTorch gets exactly.
BOUND = {torch.float32: 1e-5, torch.float16: 0.0, torch.bfloat16: 0.0}
# Where the projection's sum cancels more than PyTorch's (its summation order differs from the
# kernel's), error against the size of the terms summed instead (projection_terms): a lost or
# wrong term is about 1/K of that size, K the hidden channels, orders of magnitude above this.
TERMS_BOUND = {torch.float32: 1e-5}
TORCH_ERROR_FACTOR, FLOOR = 2.0, 1e-6


def within_tolerance(out: torch.Tensor, ref64: torch.Tensor, torch_out) -> bool:
    """``torch_out()``: PyTorch's own output in ``out``'s dtype (only computed when needed)."""
    err = rel_err(out.cpu(), ref64)
    bound = BOUND[out.dtype]
    if err <= bound + FLOOR:
        return True
    return err <= max(bound, TORCH_ERROR_FACTOR * rel_err(torch_out().cpu(), ref64)) + FLOOR


def projection_terms(block, x64: torch.Tensor) -> torch.Tensor:
    """The size of the terms each output of torchvision ``block`` (float64) sums: sum_k |w_k| h_k
    over its hidden channels (h >= 0, after ReLU6), scaled as the projection's BatchNorm scales
    the sum, plus the BatchNorm's shift and |x| where the block adds its input."""
    conv, bn = block.conv[-2], block.conv[-1]
    seen = {}

    def keep_input(module, args, out):
        seen["h"] = args[0]

    hook = conv.register_forward_hook(keep_input)
    try:
        block(x64)
    finally:
        hook.remove()
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return summed_terms(seen["h"], conv.weight.flatten(1) * scale.view(-1, 1), bn.bias - bn.running_mean * scale,
                        x64 if block.use_res_connect else None)


def summed_terms(h64: torch.Tensor, w64: torch.Tensor, b64: torch.Tensor, x64=None) -> torch.Tensor:
    """sum_k |w_jk| |h_k| + |b_j| (+ |x_j| where the block adds its input x) at every pixel: the size
    of the terms a 1x1 projection (w: (Cout, hidden), b: (Cout)) of hidden activations h sums."""
    terms = torch.nn.functional.conv2d(h64.abs(), w64.abs()[:, :, None, None], b64.abs())
    return terms + x64.abs() if x64 is not None else terms


def check_block(backend: str, dtype: torch.dtype, block, x: torch.Tensor) -> torch.Tensor:
    """Runs torchvision ``block`` fused on ``backend`` in ``dtype`` and asserts the tolerance above;
    returns the fused output."""
    device = device_of(backend)
    fused = FusedInvertedResidual.from_block(copy.deepcopy(block), backend=backend).eval().to(device, dtype)
    xd = x.to(device, dtype)
    with torch.no_grad():
        ref64 = copy.deepcopy(block).double()(x.double())
        out = fused(xd)
        low = copy.deepcopy(block).to(device, dtype)
        assert out.dtype == dtype and out.shape == ref64.shape
        if not within_tolerance(out, ref64, lambda: low(xd)):
            assert_within_terms(out, ref64, projection_terms(copy.deepcopy(block).double(), x.double()))
    return out


def assert_within_terms(out: torch.Tensor, ref64: torch.Tensor, terms64: torch.Tensor) -> None:
    """Where within_tolerance fails: the error within TERMS_BOUND of the size of the terms each
    output sums (``terms64``, float64, as projection_terms gives them)."""
    err = (out.cpu().double() - ref64).norm().item()
    terms = terms64.norm().item()
    assert out.dtype in TERMS_BOUND and err <= TERMS_BOUND[out.dtype] * terms, (
        f"relative error {rel_err(out.cpu(), ref64):.2e}, {err / max(terms, 1e-300):.2e} of the terms' size")


def make_input(shape, layout="nchw", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontig":
        # A strided view: every other column of a wider tensor.
        n, c, h, w = shape
        wide = torch.randn(n, c, h, 2 * w, generator=g).to(dtype)
        x = wide[..., ::2]
        assert x.numel() == 0 or w == 1 or not x.is_contiguous()
    return x


@contextlib.contextmanager
def num_threads(n: int):
    """PyTorch's intra-op threads set to n inside the block, restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def compiled_network_error(backend: str, device: str, shape: tuple, seed: int) -> float:
    """rel_err of torch.compile(fullgraph=True) on a converted MobileNetV2 (randomize(seed)) against
    torchvision, measured in a child process. Inductor adds overloads to its quantized_decomposed
    ops, torch then replaces those op objects, and TorchScript's table of builtins (keyed by id())
    keeps the old ids: a later torch.jit.script in the same process may meet a module attribute
    at a reused address and take it for a builtin ("builtin cannot be used as a value"), which
    failed this suite's TorchScript tests now and then."""
    code = textwrap.dedent(f"""
        import copy, torch, torchvision, mnv2_fused
        from mnv2_fused.bench.measure import rel_err
        from mnv2_fused.bench.models import randomize
        # the reference's cuDNN convolutions held to fp32 (tests/test_gpu.py's no_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        net = randomize(torchvision.models.mobilenet_v2(), seed={seed}).eval().to("{device}")
        compiled = torch.compile(mnv2_fused.convert(copy.deepcopy(net), backend="{backend}"), fullgraph=True)
        x = torch.randn({tuple(shape)}, generator=torch.Generator().manual_seed(0)).to("{device}")
        with torch.no_grad():
            print("rel_err", rel_err(compiled(x).cpu(), net(x).cpu()))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return float(run.stdout.split("rel_err")[-1])
