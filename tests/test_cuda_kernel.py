"""The CUDA kernel against torchvision; every test here needs a GPU and skips cleanly without one."""
import copy

import pytest
import torch

import mnv2_fused
from mnv2_fused import FusedInvertedResidual, fold_block
from helpers import make_block, make_input, rel_err, table2_blocks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BLOCKS = sorted(set(table2_blocks()))
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check(block, x, dtype):
    fused = FusedInvertedResidual.from_block(copy.deepcopy(block), backend="cuda").eval().to("cuda", dtype)
    with torch.no_grad():
        ref64 = copy.deepcopy(block).double()(x.double())
        out = fused(x.to("cuda", dtype)).cpu()
        torch_err = rel_err(copy.deepcopy(block).to("cuda", dtype)(x.to("cuda", dtype)).cpu(), ref64)
    err = rel_err(out, ref64)
    if dtype == torch.float32:
        assert err <= 1e-5
    else:
        assert err <= 2 * torch_err + 1e-6


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cin,cout,stride,t,res", BLOCKS, ids=[f"{a}-{b}-s{c}-t{d}" for a, b, c, d, _ in BLOCKS])
def test_table2_blocks(dtype, cin, cout, stride, t, res):
    check(make_block(cin, cout, stride, t), make_input((4, cin, max(3, res // 4), max(3, res // 4) + 1),
                                                      "channels_last"), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("h,w", [(1, 1), (7, 9), (13, 17)])
@pytest.mark.parametrize("stride,t", [(1, 1), (1, 6), (2, 6)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
def test_odd_cases(dtype, h, w, stride, t, layout):
    cin, cout = (16, 16) if stride == 1 else (16, 24)
    check(make_block(cin, cout, stride, t), make_input((3, cin, h, w), layout), dtype)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_poisoned_output_fully_written(layout):
    block = make_block(24, 32, 2, 6)
    w = mnv2_fused.FoldedWeights(*[None if p is None else p.cuda() for p in fold_block(block.conv)])
    x = make_input((5, 24, 19, 23), layout).cuda()
    out = torch.full((5, 32, 10, 12), float("nan"), device="cuda")
    if layout == "channels_last":
        out = out.contiguous(memory_format=torch.channels_last)
    torch.ops.mnv2_fused.inverted_residual_out(x, *w, 2, False, out)
    with torch.no_grad():
        ref = block(x.cpu())
    assert not out.isnan().any()
    assert rel_err(out.cpu(), ref) <= 1e-5


def test_large_tensor_over_2_31_elements():
    """int64 offsets: an input of more than 2^31 elements (fp16, about 4.3 GB)."""
    block = make_block(8, 8, 1, 1)
    n, h, w = 2, 4096, 32768  # 8 * 2 * 4096 * 32768 = 2^31 elements per tensor
    x = torch.randn(n, 8, h, w + 8, device="cuda", dtype=torch.float16)
    assert x.numel() > 2**31
    fused = FusedInvertedResidual.from_block(copy.deepcopy(block), backend="cuda").eval().to("cuda", torch.float16)
    with torch.no_grad():
        out = fused(x)
        ref_tail = copy.deepcopy(block).cuda()(x[-1:, :, -9:, :].float())[..., -1:, -7:]
    assert torch.isfinite(out[-1, :, -1, -7:]).all()
    assert rel_err(out[-1:, :, -1:, -7:].float().cpu(), ref_tail.cpu()) <= 1e-2


def test_whole_network_on_gpu():
    import torchvision

    from helpers import randomize_bn

    net = randomize_bn(torchvision.models.mobilenet_v2(), seed=5).eval()
    fused = mnv2_fused.convert(copy.deepcopy(net), backend="cuda").cuda()
    x = make_input((4, 3, 224, 224), "channels_last")
    with torch.no_grad():
        assert rel_err(fused(x.cuda()).cpu(), net(x)) <= 1e-4
