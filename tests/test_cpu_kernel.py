"""What is particular to the CPU kernel: its GEMM paths, tiling across threads, determinism and the
out= variant's checks. The shapes every back end must get right are in test_blocks.py."""
import pytest
import torch
from helpers import make_block, make_input, num_threads, rel_err

import mnv2_fused
from mnv2_fused import FusedInvertedResidual, fold_block

TOL = 1e-5


def fused_copy(block, backend="cpu"):
    return FusedInvertedResidual.from_block(block, backend).eval()


# Images large enough for several bands and strips: the ring of hidden rows carried across bands,
# chunked hidden channels, and the last band's and strip's partial sizes.
@pytest.mark.parametrize("h,w", [(56, 56), (33, 47), (64, 9)])
@pytest.mark.parametrize("stride,t", [(1, 1), (1, 6), (2, 6)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
def test_tiles_across_large_images(h, w, stride, t, layout):
    cin, cout = (24, 24) if stride == 1 else (24, 32)
    block = make_block(cin, cout, stride, t, seed=h + w)
    x = make_input((2, cin, h, w), layout, seed=h)
    with torch.no_grad():
        assert rel_err(fused_copy(block)(x), block(x)) <= TOL


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


# Output widths that end within a vector's first half (24, 40: AVX-512's half-vector tails; 60 ends
# past it), with a residual. With 8 threads a 72x72 image leaves each worker so little scratch that
# the wide hidden layer (t = 24) goes in chunks: the projection then also starts from the rows
# summed so far.
@pytest.mark.parametrize("cout", [24, 40, 60])
@pytest.mark.parametrize("n,h,w,t,threads", [(2, 9, 13, 6, 2), (1, 72, 72, 24, 8)])
def test_half_vector_tails(cout, n, h, w, t, threads):
    block = make_block(cout, cout, 1, t, seed=cout)
    x = make_input((n, cout, h, w), "channels_last", seed=h)
    with torch.no_grad(), num_threads(threads):
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
    outs = []
    for n in (1, 2):
        with num_threads(n), torch.no_grad():
            outs.append(block(x))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("cin,cout,stride,t,res", [(64, 64, 1, 6, 14), (96, 160, 2, 6, 14), (160, 320, 1, 6, 7),
                                                   (20, 36, 1, 6, 9), (32, 32, 1, 6, 28), (21, 24, 2, 5, 13)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_single_image_split_across_threads(threads, cin, cout, stride, t, res, layout):
    """A batch smaller than the thread count splits the hidden channels across threads (small
    images) or the rows (large ones); both must match the oracle, with any thread count."""
    block = make_block(cin, cout, stride, t, seed=cin + res)
    x = make_input((1, cin, res, res), layout)
    with num_threads(threads), torch.no_grad():
        out = fused_copy(block)(x)
        ref = block(x)
    assert rel_err(out, ref) <= TOL


# 14x14 and 7x7 images (the hidden channels split), a hidden width that is not whole vectors (105),
# and 28x28 (rows split): each output is one sum over the hidden channels in one order.
@pytest.mark.parametrize("cin,cout,stride,t,res", [(64, 64, 1, 6, 14), (160, 320, 1, 6, 7), (21, 24, 2, 5, 13),
                                                   (32, 32, 1, 6, 28)])
def test_single_image_same_output_on_any_thread_count(cin, cout, stride, t, res):
    """However a lone image's work is divided among threads, and whichever thread takes which part,
    the output is the same to the bit: on 1, 2 and 3 threads, call after call."""
    block = fused_copy(make_block(cin, cout, stride, t, seed=cin + res))
    x = make_input((1, cin, res, res), "channels_last")
    outs = []
    for n in (1, 2, 3):
        with num_threads(n), torch.no_grad():
            outs += [block(x) for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
