"""Triton back end: on the CPU under TRITON_INTERPRET=1 (set in conftest.py), on a GPU when present."""
import copy

import pytest
import torch

from mnv2_fused import FusedInvertedResidual, convert
from helpers import make_block, make_input, rel_err, table2_blocks

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter has no bf16 arithmetic; a GPU runs all three.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
BLOCKS = sorted(set(table2_blocks()))


def check(block, x, dtype):
    """fp32: rel. error <= 1e-4 vs torchvision; fp16/bf16: at most twice PyTorch's own error in that
    dtype, both measured against fp64."""
    fused = FusedInvertedResidual.from_block(copy.deepcopy(block), backend="triton").eval().to(DEVICE, dtype)
    with torch.no_grad():
        ref64 = copy.deepcopy(block).double()(x.double())
        out = fused(x.to(DEVICE, dtype)).cpu()
    assert out.dtype == dtype
    err = rel_err(out, ref64)
    if dtype == torch.float32:
        assert err <= 1e-4
    else:
        with torch.no_grad():
            torch_err = rel_err(copy.deepcopy(block).to(DEVICE, dtype)(x.to(DEVICE, dtype)).cpu(), ref64)
        assert err <= 2 * torch_err + 1e-6


@pytest.mark.parametrize("cin,cout,stride,t,res", BLOCKS, ids=[f"{a}-{b}-s{c}-t{d}" for a, b, c, d, _ in BLOCKS])
def test_table2_blocks_fp32(cin, cout, stride, t, res):
    check(make_block(cin, cout, stride, t), make_input((2, cin, 5, 6), "channels_last"), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cin,cout,stride,t,h,w", [
    (8, 8, 1, 6, 1, 1), (8, 12, 2, 6, 7, 9), (16, 16, 1, 1, 13, 17), (5, 5, 1, 3, 4, 3), (24, 32, 2, 6, 6, 6),
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
def test_odd_cases(dtype, cin, cout, stride, t, h, w, layout):
    check(make_block(cin, cout, stride, t), make_input((3, cin, h, w), layout), dtype)


def test_batch_zero():
    fused = FusedInvertedResidual.from_block(make_block(8, 8, 1, 6), backend="triton").eval().to(DEVICE)
    with torch.no_grad():
        assert fused(torch.randn(0, 8, 5, 5, device=DEVICE)).shape == (0, 8, 5, 5)


def test_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fused = FusedInvertedResidual.from_block(make_block(8, 8, 1, 6), backend="triton").eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="Triton needs a GPU, or its interpreter"):
        fused(torch.randn(1, 8, 5, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile cannot trace Triton's interpreter")
def test_compile_converted_model_with_triton():
    import torchvision

    from helpers import randomize_bn

    net = randomize_bn(torchvision.models.mobilenet_v2(), seed=4).eval().cuda()
    fused = torch.compile(convert(copy.deepcopy(net), backend="triton"), fullgraph=True)
    x = torch.randn(2, 3, 96, 96, device="cuda")
    with torch.no_grad():
        assert rel_err(fused(x), net(x)) <= 1e-3  # cuDNN may use TF32 in the reference
