"""opcheck, torch.compile, and the memory claim: the hidden tensor is never allocated."""
import time

import pytest
import torch
from helpers import compiled_network_error, make_block, make_input

import mnv2_fused
from mnv2_fused import FusedInvertedResidual, fold_block
from mnv2_fused.bench.measure import peak_cpu_bytes


@pytest.mark.parametrize("cin,cout,stride,t", [(16, 24, 2, 6), (24, 24, 1, 6), (32, 16, 1, 1)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(cin, cout, stride, t, layout):
    w = fold_block(make_block(cin, cout, stride, t).conv)
    x = make_input((2, cin, 7, 6), layout)
    residual = stride == 1 and cin == cout
    torch.library.opcheck(torch.ops.mnv2_fused.inverted_residual.default, (x, *w, stride, residual))
    out = torch.empty(2, cout, (7 - 1) // stride + 1, (6 - 1) // stride + 1)
    torch.library.opcheck(torch.ops.mnv2_fused.inverted_residual_out.default, (x, *w, stride, residual, out))


def test_dispatcher_kernels_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("mnv2_fused::inverted_residual", "CPU")
    if torch.version.cuda is not None and mnv2_fused.backends.has_kernel("CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key("mnv2_fused::inverted_residual", "CUDA")


def test_cuda_kernel_compiled_into_cuda_builds():
    """On a CUDA build of torch with a toolkit present, the build compiles the CUDA kernel (no GPU needed)."""
    import os
    import shutil

    toolkit = shutil.which("nvcc") or os.path.exists(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))
    if torch.version.cuda is None or not toolkit or os.environ.get("MNV2_FUSED_BUILD_CUDA") == "0":
        pytest.skip("torch is not a CUDA build, no CUDA toolkit, or MNV2_FUSED_BUILD_CUDA=0")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("mnv2_fused::inverted_residual", "CUDA")


@pytest.mark.slow
def test_compile_fullgraph_converted_mobilenet_v2():
    assert compiled_network_error("auto", "cpu", (1, 3, 64, 64), seed=3) <= 1e-4


def test_hidden_tensor_never_allocated():
    """16 -> 24, stride 2, t = 6, batch 4, 112x112, fp32: peak < output + a quarter of the hidden tensor."""
    block = FusedInvertedResidual.from_block(make_block(16, 24, 2, 6), backend="cpu").eval()
    x = make_input((4, 16, 112, 112), "channels_last")
    with torch.no_grad():
        block(x)  # fold the weights outside the measured call
        peak = peak_cpu_bytes(lambda: block(x))
        eager_peak = peak_cpu_bytes(lambda: make_block(16, 24, 2, 6)(x))
    out_bytes = 4 * 24 * 56 * 56 * 4
    hidden_bytes = 4 * 96 * 112 * 112 * 4
    assert peak >= out_bytes  # the measurement sees at least the output
    assert peak < out_bytes + hidden_bytes // 4
    assert eager_peak > hidden_bytes  # the yardstick: eager materializes it


def test_alternating_ratio_says_which_is_faster():
    # Sleeps, not computation: the ratio's direction and size, not the machine's speed, under test.
    from mnv2_fused.bench.measure import alternating_ratio

    ratio, fast, slow = alternating_ratio(lambda: time.sleep(0.002), lambda: time.sleep(0.006), rounds=3, repeat=3,
                                          pause=0)
    assert 1.8 < ratio < 4.0
    assert fast < slow
