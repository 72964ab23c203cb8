"""The fused CPU kernel against torchvision's InvertedResidual (the oracle), fp32."""
import pytest
import torch

import mnv2_fused
from mnv2_fused import FusedInvertedResidual, fold_block
from helpers import make_block, make_input, rel_err, table2_blocks

TOL = 1e-5
BLOCKS = sorted(set(table2_blocks()))


def fused_copy(block, backend="cpu"):
    return FusedInvertedResidual.from_block(block, backend).eval()


@pytest.mark.parametrize("cin,cout,stride,t,res", BLOCKS, ids=[f"{a}-{b}-s{c}-t{d}" for a, b, c, d, _ in BLOCKS])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_table2_block(cin, cout, stride, t, res, layout):
    block = make_block(cin, cout, stride, t)
    side = max(3, res // 8)  # spatial size scaled down for speed
    x = make_input((2, cin, side, side + 1), layout)
    with torch.no_grad():
        ref = block(x)
        out = fused_copy(block)(x)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= TOL
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (7, 9), (13, 17), (1, 9), (9, 1), (56, 56)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("t", [1, 6])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
def test_odd_sizes(h, w, stride, t, layout):
    cin, cout = (8, 8) if stride == 1 else (8, 12)
    block = make_block(cin, cout, stride, t, seed=h * 31 + w)
    x = make_input((3, cin, h, w), layout, seed=h + w)
    with torch.no_grad():
        ref = block(x)
        out = fused_copy(block)(x)
    assert rel_err(out, ref) <= TOL


@pytest.mark.parametrize("batch", [0, 1, 5])
def test_batch_sizes(batch):
    block = make_block(24, 24, 1, 6)
    x = make_input((batch, 24, 9, 11))
    with torch.no_grad():
        ref = block(x)
        out = fused_copy(block)(x)
    assert out.shape == ref.shape == (batch, 24, 9, 11)
    if batch:
        assert rel_err(out, ref) <= TOL


# GEMMs with K = 16 or 24 (and the stem's 27) take their own path on AVX-512 (B held in
# registers): expands from 16 and 24 input channels, projections from as many hidden channels
# (t = 1), with column tails (120 = 7.5 vectors) and row counts that leave a remainder, in both
# layouts; K = 32, just past it, through the general path.
@pytest.mark.parametrize("cin,cout,stride,t", [(16, 24, 2, 6), (24, 24, 1, 5), (16, 16, 1, 1), (24, 40, 2, 1),
                                               (16, 16, 1, 3), (32, 40, 2, 6), (32, 16, 1, 1)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_short_k_gemms(cin, cout, stride, t, layout):
    block = make_block(cin, cout, stride, t, seed=cin + t)
    x = make_input((2, cin, 13, 11), layout, seed=t)
    with torch.no_grad():
        assert rel_err(fused_copy(block)(x), block(x)) <= TOL


@pytest.mark.parametrize("cin,cout,hidden", [(3, 5, 7), (1, 1, 1), (17, 33, 100), (5, 5, 31)])
def test_channel_counts_not_multiple_of_tile(cin, cout, hidden):
    """Channel counts that do not fill the GEMM micro-tile or a hidden chunk, through the op itself."""
    g = torch.Generator().manual_seed(cin)
    x = torch.randn(2, cin, 10, 7, generator=g)
    w = mnv2_fused.FoldedWeights(torch.randn(hidden, cin, generator=g), torch.randn(hidden, generator=g),
                                 torch.randn(hidden, 3, 3, generator=g), torch.randn(hidden, generator=g),
                                 torch.randn(cout, hidden, generator=g), torch.randn(cout, generator=g))
    for stride in (1, 2):
        residual = stride == 1 and cin == cout
        ref = mnv2_fused.inverted_residual_reference(x.double(), mnv2_fused.FoldedWeights(*[p.double() for p in w]),
                                                     stride, residual)
        out = mnv2_fused.inverted_residual(x, w, stride, residual, backend="cpu")
        assert rel_err(out, ref) <= TOL


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_out_variant_writes_every_element(layout):
    """The output buffer is poisoned with NaN first: an element the kernel forgets cannot pass."""
    block = make_block(16, 24, 2, 6)
    x = make_input((3, 16, 15, 13), layout)
    w = fold_block(block.conv)
    with torch.no_grad():
        ref = block(x)
    out = torch.full_like(ref, float("nan"))
    if layout == "channels_last":
        out = out.contiguous(memory_format=torch.channels_last)
    torch.ops.mnv2_fused.inverted_residual_out(x, *w, 2, False, out)
    assert not out.isnan().any()
    assert rel_err(out, ref) <= TOL


def test_out_variant_rejects_aliasing_and_bad_shape():
    block = make_block(8, 8, 1, 6)
    w = fold_block(block.conv)
    x = make_input((1, 8, 5, 5))
    with pytest.raises(RuntimeError, match="single memory location"):
        torch.ops.mnv2_fused.inverted_residual_out(x, *w, 1, True, x)
    with pytest.raises(ValueError, match="out must have shape"):
        torch.ops.mnv2_fused.inverted_residual_out(x, *w, 1, True, torch.empty(1, 8, 4, 5))


def test_threads_give_identical_results():
    block = fused_copy(make_block(24, 24, 1, 6))
    x = make_input((4, 24, 20, 20), "channels_last")
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(block(x))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("cin,cout,stride,t,res", [(64, 64, 1, 6, 14), (96, 160, 2, 6, 14), (160, 320, 1, 6, 7),
                                                   (20, 36, 1, 6, 9), (32, 32, 1, 6, 28)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_single_image_split_across_threads(threads, cin, cout, stride, t, res, layout):
    """A batch smaller than the thread count splits the hidden channels across threads (small
    images) or the rows (large ones); both must match the oracle, with any thread count."""
    block = make_block(cin, cout, stride, t, seed=cin + res)
    x = make_input((1, cin, res, res), layout)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.no_grad():
            out = fused_copy(block)(x)
            ref = block(x)
    finally:
        torch.set_num_threads(old)
    assert rel_err(out, ref) <= TOL
