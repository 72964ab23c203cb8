"""The CUDA kernel's own source (csrc/cuda/inverted_residual_kernel.cuh), run on the CPU through the
SIMT emulation (tests/simt/), against torchvision in float64: every Table-2 block in fp32, fp16 and
bf16, odd shapes, and each of the launcher's plan kinds. Then the emulation's own check: deleting
any one __syncthreads, or shifting the halo by one, must make a test fail."""
import copy
import os
import re

import pytest
import simt_kernel
import torch
from helpers import make_block, make_input, rel_err, table2_blocks, within_tolerance

from mnv2_fused import fold_block

pytestmark = pytest.mark.skipif(simt_kernel.cuda_include_dir() is None,
                                reason="no CUDA toolkit headers (cuda_fp16.h); set CUDA_HOME")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BLOCKS = sorted(set(table2_blocks()))


@pytest.fixture(scope="module")
def kernel():
    return simt_kernel.build()


def check(kernel, block, x, dtype, **options):
    """Runs the emulated kernel on x in dtype; asserts the tolerance table's bound (helpers.py)."""
    stride = block.conv[-3][0].stride[0]
    xd = x.to(dtype)
    out, plan = simt_kernel.run(kernel, xd, fold_block(block.conv), stride, block.use_res_connect, **options)
    with torch.no_grad():
        ref64 = copy.deepcopy(block).double()(x.double())
        low = copy.deepcopy(block).to(dtype)
        assert out.shape == ref64.shape and not out.isnan().any()
        assert within_tolerance(out, ref64, lambda: low(xd)), f"relative error {rel_err(out, ref64):.2e}, plan {plan}"
    return plan


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cin,cout,stride,t,res", BLOCKS, ids=[f"{a}-{b}-s{c}-t{d}" for a, b, c, d, _ in BLOCKS])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_table2_block(kernel, dtype, cin, cout, stride, t, res, layout):
    side = max(3, res // 16)
    check(kernel, make_block(cin, cout, stride, t), make_input((2, cin, side, side + 1), layout), dtype)


# Cin 3, Cout 1, 1x1 and 13x7 images, hidden widths that fill no chunk (15, 21), no expand.
ODD = [(3, 8, 1, 6, 13, 7), (8, 1, 2, 6, 13, 7), (5, 5, 1, 3, 1, 1), (7, 7, 1, 3, 13, 7), (16, 16, 1, 1, 9, 6),
       (24, 40, 2, 1, 7, 13), (3, 1, 2, 5, 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cin,cout,stride,t,h,w", ODD, ids=[f"{a}-{b}-s{c}-t{d}-{e}x{f}" for a, b, c, d, e, f in ODD])
def test_odd_shapes(kernel, dtype, cin, cout, stride, t, h, w):
    check(kernel, make_block(cin, cout, stride, t, seed=cin * h), make_input((3, cin, h, w)), dtype)


def test_empty_batch(kernel):
    block = make_block(8, 8, 1, 6)
    out, _ = simt_kernel.run(kernel, torch.randn(0, 8, 5, 5), fold_block(block.conv), 1, True)
    assert out.shape == (0, 8, 5, 5)


# The launcher's plan kinds: hidden channels split over CTAs (a small grid on 132 SMs) or not (one
# SM), several chunks per CTA, tiles smaller than the image (little shared memory), output
# channels in several slices (Cout past what one CTA's accumulators hold), and tiles under a
# sixteenth of each side (an image so large that a sixteenth overflows the accumulators).
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cin,cout,stride,t,hw,sms,smem,kind", [
    (24, 24, 1, 6, (9, 10), 132, 227 * 1024, "split"),
    (24, 24, 1, 6, (9, 10), 1, 227 * 1024, "chunks"),
    (32, 48, 2, 6, (17, 15), 1, 24 * 1024, "tiles"),
    (16, 700, 1, 4, (3, 4), 1, 227 * 1024, "cout_slices"),
    (8, 320, 1, 1, (129, 131), 132, 227 * 1024, "small_tiles"),
], ids=["split", "chunks", "tiles", "cout_slices", "small_tiles"])
def test_plan_kinds(kernel, dtype, cin, cout, stride, t, hw, sms, smem, kind):
    plan = check(kernel, make_block(cin, cout, stride, t, seed=cout), make_input((2, cin, *hw)), dtype,
                 sm_count=sms, max_smem=smem)
    assert {"split": plan.splits > 1, "chunks": plan.splits == 1 and plan.chunks > 1,
            "tiles": plan.th * plan.tw < ((hw[0] - 1) // stride + 1) * ((hw[1] - 1) // stride + 1),
            "cout_slices": plan.cout_parts > 1,
            "small_tiles": plan.th * 16 < hw[0] or plan.tw * 16 < hw[1]}[kind], plan


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cin,cout,t,hw", [(8, 8, 1, (4096, 32776)), (16, 24, 6, (2048, 2048)),
                                           (160, 320, 6, (1024, 1024)), (96, 576, 6, (3000, 17))])
def test_large_images_have_a_plan(kernel, dtype, cin, cout, t, hw):
    """Every image size gets a tile that fits the accumulators and shared memory (planned only)."""
    block = make_block(cin, cout, 1, t)
    _, plan = simt_kernel.run(kernel, torch.empty(2, cin, *hw, dtype=dtype, device="meta"), fold_block(block.conv),
                              1, cin == cout, plan_only=True)
    accumulator_tiles = -(-plan.th * plan.tw // 16) * (plan.cout_part // 16)
    assert plan.smem_bytes > 0 and accumulator_tiles <= 80, plan  # tc_plan.h's kMaxAccTiles


@pytest.mark.parametrize("cin,vector", [(24, True), (5, False)])
def test_both_ways_of_staging_rows(kernel, cin, vector):
    """Rows whose length is a multiple of 16 bytes are staged in 16-byte copies, others element-wise;
    both are checked against the reference here."""
    plan = check(kernel, make_block(cin, 16, 1, 6), make_input((2, cin, 6, 7)), torch.float16)
    assert bool(plan.vec_x) == bool(plan.vec_we) == bool(plan.vec_wp) == vector


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle"])
def test_result_does_not_depend_on_thread_order(kernel, order):
    block = make_block(24, 24, 1, 6)
    x = make_input((2, 24, 9, 10))
    out, _ = simt_kernel.run(kernel, x, fold_block(block.conv), 1, True, sm_count=1, order=order, seed=7)
    ref, _ = simt_kernel.run(kernel, x, fold_block(block.conv), 1, True, sm_count=1, order="forward")
    assert torch.equal(out, ref)


# -- the emulation catches what it must ----------------------------------------------------------
def barrier_lines():
    with open(simt_kernel.KERNEL_SOURCE) as f:
        return [i + 1 for i, line in enumerate(f) if re.match(r"\s*__syncthreads\(\);", line)]


def fails(kernel_lib, **options):
    """Whether a block with an expand, several chunks per CTA, a residual and a partial tile goes
    wrong (an error from the emulation, NaN, or beyond tolerance) with these emulation options."""
    block = make_block(24, 24, 1, 6, seed=5)
    x = make_input((2, 24, 9, 10), seed=5)
    try:
        check(kernel_lib, block, x, torch.float32, sm_count=1, **options)
    except (AssertionError, simt_kernel.EmulationError):
        return True
    return False


def test_kernel_has_the_barriers_the_mutation_test_deletes():
    assert len(barrier_lines()) == 5


@pytest.mark.parametrize("index", range(5))
def test_deleting_any_barrier_fails(kernel, index):
    line = barrier_lines()[index]
    assert not fails(kernel)  # the same case passes with every barrier in place
    assert fails(kernel, skip_barrier_line=line), f"deleting the __syncthreads on line {line} went unnoticed"


@pytest.mark.parametrize("shift", ["+ 1", "- 1"])
def test_shifting_the_halo_fails(tmp_path, shift):
    with open(simt_kernel.KERNEL_SOURCE) as f:
        source = f.read()
    original = "return o * stride - 1;"
    assert source.count(original) == 1
    mutated = tmp_path / "inverted_residual_kernel.cuh"
    mutated.write_text(source.replace(original, f"return o * stride - 1 {shift};"))
    lib = simt_kernel.build(str(mutated), tag="-halo" + ("p" if "+" in shift else "m"))
    assert fails(lib)
    os.remove(mutated)
