"""What only a GPU can show: 64-bit offsets on huge tensors, and whole converted networks on the
CUDA and Triton back ends, under torch.compile too, and the other families' models (their blocks on
Triton). Skipped without a GPU."""
import copy

import pytest
import torch
import torchvision
from helpers import compiled_network_error, make_block, make_input, randomize_bn, rel_err

import mnv2_fused
from mnv2_fused import FusedInvertedResidual

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def no_tf32():
    # The references run cuDNN convolutions, which take TF32 by default: hold them to fp32.
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_large_tensor_over_2_31_elements(backend):
    """int64 offsets: an input of more than 2^31 elements (fp16, about 4.3 GB)."""
    block = make_block(8, 8, 1, 1)
    n, h, w = 2, 4096, 32768
    x = torch.randn(n, 8, h, w + 8, device="cuda", dtype=torch.float16)
    assert x.numel() > 2**31
    fused = FusedInvertedResidual.from_block(copy.deepcopy(block), backend=backend).eval().to("cuda", torch.float16)
    with torch.no_grad():
        out = fused(x)
        ref_tail = copy.deepcopy(block).cuda()(x[-1:, :, -9:, :].float())[..., -1:, -7:]
    assert torch.isfinite(out[-1, :, -1, -7:]).all()
    assert rel_err(out[-1:, :, -1:, -7:].float().cpu(), ref_tail.cpu()) <= 1e-2


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_whole_network_on_gpu(backend):
    net = randomize_bn(torchvision.models.mobilenet_v2(), seed=5).eval()
    fused = mnv2_fused.convert(copy.deepcopy(net), backend=backend).cuda()
    x = make_input((4, 3, 224, 224), "channels_last")
    with torch.no_grad():
        assert rel_err(fused(x.cuda()).cpu(), net(x)) <= 1e-4


# fp32 on one model only: each model's first run compiles a Triton kernel per block shape, which
# takes two to four times as long in fp32 (its products in full precision) as in fp16.
@pytest.mark.parametrize("name,dtype", [(name, torch.float16) for name in ("mobilenet_v3_large", "mobilenet_v3_small",
                                                                         "efficientnet_b0", "mnasnet1_0")]
                         + [("mobilenet_v3_small", torch.float32)])
def test_family_model_on_gpu(name, dtype):
    """As users run them: converted on the CPU with the default back end, then moved to the GPU."""
    torch.manual_seed(0)
    net = randomize_bn(getattr(torchvision.models, name)(), seed=1, conv_gain=1.0).eval()
    fused = mnv2_fused.convert(copy.deepcopy(net)).to("cuda", dtype)
    assert mnv2_fused.fusion_report(fused).fused_blocks
    x = make_input((2, 3, 160, 160), "channels_last")
    with torch.no_grad():
        ref = net(x)
        err = rel_err(fused(x.to("cuda", dtype)).float().cpu(), ref)
        if dtype == torch.float32:
            bound = 1e-4
        else:  # within twice PyTorch's own fp16 error on the same model, and a rounding floor
            torch_err = rel_err(net.to("cuda", dtype)(x.to("cuda", dtype)).float().cpu(), ref)
            bound = 2 * torch_err + 1e-3
    assert err <= bound, (err, bound)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_compile_converted_model(backend):
    assert compiled_network_error(backend, "cuda", (2, 3, 96, 96), seed=4) <= 1e-4
