"""The whole-network path: the stem+first-block, head+pool and classifier ops against their
references, convert() on a torchvision mobilenet_v2 (outputs, state_dict, training), the paper's
memory bound, and the CPU kernel's other instruction sets."""
import copy
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import make_input, num_threads, randomize_bn, rel_err
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.mobilenetv2 import MobileNetV2

from mnv2_fused import FusedMobileNetV2, convert
from mnv2_fused.bench.measure import held_bytes, peak_cpu_bytes, scope_times
from mnv2_fused.layout import as_matrix, kernel_layout, pack_columns
from mnv2_fused.network import _fold_network
from mnv2_fused.ops import head_pool, linear, run_block, stem_block
from mnv2_fused.stem_head import StemWeights, head_reference, stem_reference

TOL = 1e-5


@pytest.fixture(scope="module")
def reference_net():
    return randomize_bn(torchvision.models.mobilenet_v2(), seed=4).eval()


def random_stem(cin, hidden, cout, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return StemWeights(r(hidden, cin, 3, 3) * 0.3, r(hidden) * 0.1, r(hidden, 3, 3) * 0.3, r(hidden) * 0.1,
                       r(cout, hidden) * 0.2, r(cout) * 0.1)


# 600 columns: a row of more pixels than one GEMM takes.
@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (7, 9), (33, 17), (64, 64), (3, 600)])
@pytest.mark.parametrize("stem_stride,stride", [(2, 1), (1, 1), (2, 2), (1, 2)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
def test_stem_op_matches_reference(h, w, stem_stride, stride, layout):
    wts = random_stem(3, 32, 16, seed=h * 7 + w)
    x = make_input((2, 3, h, w), layout, seed=h + w)
    out = torch.ops.mnv2_fused.stem_inverted_residual(x, wts.w_stem, wts.b_stem, stem_stride, *wts[2:], stride)
    ref = stem_reference(x, wts, stem_stride, stride)
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, ref) <= TOL


# An NCHW image's rows are made channels-last eight pixels at a time, the rest one by one: the stem
# then reads the numbers a channels_last image holds, so the outputs are equal to the bit.
@pytest.mark.parametrize("w", [1, 7, 8, 9, 16, 23, 61])
@pytest.mark.parametrize("stem_stride", [1, 2])
@pytest.mark.parametrize("cropped", [False, True])
def test_stem_nchw_rows_equal_channels_last(w, stem_stride, cropped):
    wts = random_stem(3, 32, 16, seed=w)
    x = make_input((2, 3, 9, w + 5), seed=w)[..., 2 : 2 + w] if cropped else make_input((2, 3, 9, w), seed=w)
    run = lambda t: torch.ops.mnv2_fused.stem_inverted_residual(  # noqa: E731
        t, wts.w_stem, wts.b_stem, stem_stride, *wts[2:], 1)
    assert torch.equal(run(x), run(x.contiguous(memory_format=torch.channels_last)))


@pytest.mark.parametrize("cin,hidden,cout", [(1, 8, 4), (5, 40, 24), (3, 70, 19)])
def test_stem_op_odd_widths(cin, hidden, cout):
    wts = random_stem(cin, hidden, cout, seed=cin)
    x = make_input((3, cin, 11, 10))
    out = torch.ops.mnv2_fused.stem_inverted_residual(x, wts.w_stem, wts.b_stem, 2, *wts[2:], 1)
    assert rel_err(out, stem_reference(x, wts, 2, 1)) <= TOL


# Weights and pixels past one block of rows, columns or pixels the kernel streams at a time.
@pytest.mark.parametrize("cin,cout,hw", [(320, 1280, (7, 5)), (7, 19, (7, 5)), (64, 100, (7, 5)),
                                         (130, 300, (17, 19))])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
def test_head_op_matches_reference(cin, cout, hw, layout):
    g = torch.Generator().manual_seed(cin)
    w, b = torch.randn(cout, cin, generator=g) * cin ** -0.5, torch.randn(cout, generator=g)
    x = make_input((3, cin, *hw), layout)
    ref = head_reference(x, w, b)
    for weight in (w, kernel_layout(w), pack_columns(w)):  # any layout; the cached one is read in place
        assert rel_err(torch.ops.mnv2_fused.pointwise_relu6_mean(x, weight, b), ref) <= TOL


@pytest.mark.parametrize("n,k,o", [(1, 1280, 1000), (8, 1280, 1000), (3, 5, 7), (300, 17, 33)])
def test_linear_op_matches_torch(n, k, o):
    g = torch.Generator().manual_seed(n + k)
    x, w, b = torch.randn(n, 2 * k, generator=g)[:, ::2], torch.randn(o, k, generator=g), torch.randn(o, generator=g)
    ref = F.linear(x, w, b)
    # Strided rows run on the general micro-tiles; contiguous ones on the register-resident ones,
    # rows past whole tiles in shorter tiles of the same kind.
    for rows in (x, x.contiguous()):
        for weight in (w, kernel_layout(w), pack_columns(w)):
            assert rel_err(torch.ops.mnv2_fused.linear(rows, weight, b), ref) <= TOL


def test_every_row_count_through_the_micro_tiles():
    # A panel's rows go in micro-tiles as tall as its accumulators allow (6 or 8 rows on AVX-512, 3
    # to 8 on AVX2), the rows past whole ones in tiles one row shorter once there are enough rows
    # (49 = 4 x 6 + 5 x 5), else in halves and quarters of a tile: every remainder of every height,
    # for panels of 1 to 4 vectors.
    g = torch.Generator().manual_seed(3)
    for o in (16, 32, 48, 64, 80):
        w, b = torch.randn(o, 37, generator=g) * 37 ** -0.5, torch.randn(o, generator=g)
        for m in range(1, 74):
            x = torch.randn(1, 37, 1, m, generator=g).contiguous(memory_format=torch.channels_last)
            out = torch.ops.mnv2_fused.pointwise(x, pack_columns(w), b, "relu6")
            assert rel_err(out, F.relu6(F.conv2d(x, w[:, :, None, None], b))) <= TOL, (o, m)
            pooled = torch.ops.mnv2_fused.pointwise_relu6_mean(x, pack_columns(w), b)
            assert rel_err(pooled, head_reference(x, w, b)) <= TOL, (o, m)


def test_plain_weights_run_as_the_packed_ones():
    # (O, K) weights in nn.Linear's layout, or with any strides, are packed on every call: outputs
    # bitwise those of the weights packed as the modules cache them, O a multiple of 16 or not.
    g = torch.Generator().manual_seed(5)
    for o, k in ((1000, 40), (37, 11), (48, 24)):
        w = torch.randn(o, 2 * k, generator=g)[:, ::2]
        b, x = torch.randn(o, generator=g), torch.randn(3, k, generator=g)
        packed = torch.ops.mnv2_fused.linear(x, pack_columns(w), b)
        for weight in (w, w.contiguous()):
            assert torch.equal(torch.ops.mnv2_fused.linear(x, weight, b), packed)
        xs = make_input((2, k, 5, 6), "channels_last")
        assert torch.equal(torch.ops.mnv2_fused.pointwise(xs, w, b, "relu6"),
                           torch.ops.mnv2_fused.pointwise(xs, pack_columns(w), b, "relu6"))
        assert torch.equal(torch.ops.mnv2_fused.pointwise_relu6_mean(xs, w, b),
                           torch.ops.mnv2_fused.pointwise_relu6_mean(xs, pack_columns(w), b))
    cin, hidden, cout = 24, 144, 24
    w1, b1 = torch.randn(hidden, 2 * cin, generator=g)[:, ::2], torch.randn(hidden, generator=g)
    wd, bd = torch.randn(hidden, 3, 3, generator=g), torch.randn(hidden, generator=g)
    w2, b2 = torch.randn(cout, hidden, generator=g) * hidden ** -0.5, torch.randn(cout, generator=g)
    x = make_input((2, cin, 9, 11), "channels_last")
    plain = torch.ops.mnv2_fused.inverted_residual(x, w1, b1, wd, bd, w2, b2, 1, True)
    packed = torch.ops.mnv2_fused.inverted_residual(x, pack_columns(w1), b1, wd, bd, pack_columns(w2), b2, 1, True)
    assert torch.equal(plain, packed)


def test_empty_batches():
    wts = random_stem(3, 32, 16)
    x = torch.randn(0, 3, 8, 8)
    assert torch.ops.mnv2_fused.stem_inverted_residual(x, wts.w_stem, wts.b_stem, 2, *wts[2:], 1).shape == (0, 16, 4, 4)
    assert torch.ops.mnv2_fused.pointwise_relu6_mean(torch.randn(0, 4, 2, 2), torch.randn(6, 4), torch.randn(6)).shape == (0, 6)
    assert torch.ops.mnv2_fused.linear(torch.randn(0, 4), torch.randn(6, 4), torch.randn(6)).shape == (0, 6)


def test_bad_arguments_raise_clear_errors():
    wts = random_stem(3, 32, 16)
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="w_stem must have shape"):
        torch.ops.mnv2_fused.stem_inverted_residual(torch.randn(1, 4, 8, 8), wts.w_stem, wts.b_stem, 2, *wts[2:], 1)
    with pytest.raises(ValueError, match="strides must be 1 or 2"):
        torch.ops.mnv2_fused.stem_inverted_residual(x, wts.w_stem, wts.b_stem, 3, *wts[2:], 1)
    with pytest.raises(TypeError, match="float32 only"):
        torch.ops.mnv2_fused.stem_inverted_residual(x.double(), *[t.double() for t in wts[:2]], 2,
                                                    *[t.double() for t in wts[2:]], 1)
    with pytest.raises(ValueError, match="w must have shape"):
        torch.ops.mnv2_fused.pointwise_relu6_mean(torch.randn(1, 5, 2, 2), torch.randn(6, 4), torch.randn(6))
    with pytest.raises(ValueError, match="x must be"):
        torch.ops.mnv2_fused.linear(torch.randn(2, 3, 4), torch.randn(6, 4), torch.randn(6))
    packed = pack_columns(torch.randn(20, 4))  # (2, 4, 16)
    with pytest.raises(ValueError, match="packed w must have shape"):
        torch.ops.mnv2_fused.linear(torch.randn(2, 4), packed, torch.randn(40))
    with pytest.raises(ValueError, match="packed w must be contiguous"):
        torch.ops.mnv2_fused.linear(torch.randn(2, 4), packed.transpose(0, 1).contiguous().transpose(0, 1),
                                    torch.randn(20))
    with pytest.raises(ValueError, match="w must be"):
        torch.ops.mnv2_fused.pointwise_relu6_mean(torch.randn(1, 4, 2, 2), torch.randn(20), torch.randn(20))


def test_packed_weights_round_trip():
    w = torch.randn(37, 11)
    p = pack_columns(w)
    assert p.shape == (3, 11, 16) and p.is_contiguous()
    assert torch.equal(as_matrix(p, 37), w) and torch.equal(p[2, :, 5:], torch.zeros(11, 11))


def test_opcheck_new_ops():
    wts = random_stem(3, 32, 16)
    x = make_input((2, 3, 9, 8))
    torch.library.opcheck(torch.ops.mnv2_fused.stem_inverted_residual.default,
                          (x, wts.w_stem, wts.b_stem, 2, *wts[2:], 1))
    torch.library.opcheck(torch.ops.mnv2_fused.pointwise_relu6_mean.default,
                          (make_input((2, 8, 3, 3)), torch.randn(12, 8), torch.randn(12)))
    torch.library.opcheck(torch.ops.mnv2_fused.linear.default, (torch.randn(2, 8), torch.randn(12, 8), torch.randn(12)))
    torch.library.opcheck(torch.ops.mnv2_fused.pointwise_relu6_mean.default,
                          (make_input((2, 8, 3, 3)), pack_columns(torch.randn(12, 8)), torch.randn(12)))
    torch.library.opcheck(torch.ops.mnv2_fused.linear.default,
                          (torch.randn(2, 8), pack_columns(torch.randn(12, 8)), torch.randn(12)))


@pytest.mark.parametrize("size", [(224, 224), (97, 131), (32, 32)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_converted_network_matches_torchvision(reference_net, size, layout):
    net = convert(copy.deepcopy(reference_net))
    assert type(net) is FusedMobileNetV2 and isinstance(net, MobileNetV2)
    x = make_input((2, 3, *size), layout)
    with torch.no_grad():
        assert rel_err(net(x), reference_net(x)) <= 1e-4


@pytest.mark.parametrize("n,size", [(1, 224), (3, 160), (2, 32)])
def test_network_op_equals_its_head_then_its_classifier(reference_net, n, size):
    """The head prefetches the classifier's weight while it runs (csrc/cpu/kernel_gemm.h, Gemm::warm):
    the output is still, bit for bit, the head's followed by the classifier op's, for classifiers of
    any size and weights in any layout (packed; nn.Linear's; strided; a weight smaller than what
    one micro-tile prefetches)."""
    net = convert(copy.deepcopy(reference_net))
    x = make_input((n, 3, size, size), "channels_last")
    g = torch.Generator().manual_seed(n)
    with torch.no_grad():
        net(x)
        args = list(net._bound.weights(net.features, net.classifier).op_arguments())
        pooled = torch.ops.mnv2_fused.mobilenet_v2_forward(x, *args[:-1], [])
        for o in (1000, 10, 1):
            w, b = torch.randn(o, 1280, generator=g) * 0.03, torch.randn(o, generator=g)
            for weight in (pack_columns(w), w, w.t().contiguous().t(), torch.randn(o, 2560, generator=g)[:, ::2]):
                out = torch.ops.mnv2_fused.mobilenet_v2_forward(x, *args[:-1], [weight, b])
                assert torch.equal(out, torch.ops.mnv2_fused.linear(pooled, weight, b)), (o, weight.stride())


@pytest.mark.parametrize("n,size", [(1, 224), (1, 97), (3, 64)])
def test_network_op_equals_its_stages_as_ops_of_their_own(reference_net, n, size):
    """Inside the network op a block may be tiled otherwise than as an op of its own (at batch 1 a
    block after one that shared its rows out among the threads is planned in bands of rows too,
    csrc/cpu/plan.cpp): the output is still, bit for bit, the stages' run one after another."""
    net = convert(copy.deepcopy(reference_net))
    x = make_input((n, 3, size, size))
    with num_threads(2), torch.no_grad():
        out = net(x)
        w = _fold_network(net.features, net.classifier)
        t = stem_block(x, w.stem, w.stem_stride, w.stride, use_kernel=True)
        for fw, stride, residual in w.blocks:
            t = run_block(t, fw, stride, residual, "cpu")
        t = linear(head_pool(t, *w.head, use_kernel=True), *w.classifier, use_kernel=True)
    assert torch.equal(out, t)


def test_converted_network_keeps_state_dict_keys_and_loads_checkpoints(reference_net):
    net = convert(torchvision.models.mobilenet_v2().eval())
    assert list(net.state_dict()) == list(reference_net.state_dict())
    net.load_state_dict(reference_net.state_dict())  # a torchvision checkpoint
    x = make_input((1, 3, 64, 64))
    with torch.no_grad():
        assert rel_err(net(x), reference_net(x)) <= 1e-4
    # and the cached folds follow an in-place reload
    other = randomize_bn(torchvision.models.mobilenet_v2(), seed=9).eval()
    net.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert rel_err(net(x), other(x)) <= 1e-4


def test_cached_folds_follow_replaced_tensors_and_blocks(reference_net):
    # The cache compares identities only after a registration somewhere in the process: each kind
    # of replacement must still be seen, deep in the tree, after cached forwards.
    net = convert(copy.deepcopy(reference_net))
    ref = copy.deepcopy(reference_net)
    x = make_input((1, 3, 64, 64))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        assert rel_err(net(x), ref(x)) <= 1e-4
        w = ref.features[5].conv[2].weight
        ref.features[5].conv[2].weight = torch.nn.Parameter(torch.randn(w.shape, generator=g) * w.std())
        net.features[5].conv[2].weight = torch.nn.Parameter(ref.features[5].conv[2].weight.clone())
        assert rel_err(net(x), ref(x)) <= 1e-4
        var = torch.rand(ref.features[12].conv[1][1].running_var.shape, generator=g) + 0.5
        ref.features[12].conv[1][1].running_var = var
        net.features[12].conv[1][1].running_var = var.clone()
        assert rel_err(net(x), ref(x)) <= 1e-4
        bn = randomize_bn(torch.nn.BatchNorm2d(1280), seed=5).eval()
        ref.features[18][1], net.features[18][1] = bn, copy.deepcopy(bn)
        assert rel_err(net(x), ref(x)) <= 1e-4
        other = randomize_bn(torchvision.models.mobilenet_v2(), seed=6).eval()
        ref.load_state_dict(other.state_dict())
        net.load_state_dict(other.state_dict(), assign=True)
        assert rel_err(net(x), ref(x)) <= 1e-4


def test_converted_network_trains_like_torchvision(reference_net):
    net = convert(copy.deepcopy(reference_net)).train()
    ref = copy.deepcopy(reference_net).train()
    x = make_input((2, 3, 64, 64))
    torch.manual_seed(0)  # the same dropout masks
    out = net(x)
    torch.manual_seed(0)
    expected = ref(x)
    assert rel_err(out, expected) <= 1e-5
    out.sum().backward()
    assert net.features[0][0].weight.grad is not None
    net.eval()
    with torch.enable_grad():  # gradients needed: torchvision's forward, differentiable
        y = net(x.requires_grad_())
        assert y.requires_grad


def test_convert_can_leave_the_network_unfused(reference_net):
    net = convert(copy.deepcopy(reference_net), whole_network=False)
    assert type(net) is MobileNetV2
    with torch.no_grad():
        x = make_input((1, 3, 64, 64))
        assert rel_err(net(x), reference_net(x)) <= 1e-4


def test_replaced_stem_falls_back_to_torchvision_forward(reference_net):
    net = convert(copy.deepcopy(reference_net))
    net.features[0] = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 5, 2, 2, bias=False), torch.nn.BatchNorm2d(32),
                                          torch.nn.ReLU6()).eval()
    ref = copy.deepcopy(reference_net)
    ref.features[0] = copy.deepcopy(net.features[0])
    x = make_input((1, 3, 64, 64))
    with torch.no_grad():
        assert rel_err(net(x), ref(x)) <= 1e-4


def test_whole_network_peak_memory_within_paper_bound(reference_net, monkeypatch):
    """Section 5.1: batch 1, 224x224, fp32 -- at most 1.25 MiB allocated at once during a forward,
    with the arena at its exact size (by default it rounds up to a 2 MiB huge page:
    test_forward_arena.py)."""
    monkeypatch.setenv("MNV2_FUSED_HUGE_PAGES", "0")
    net = convert(copy.deepcopy(reference_net))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        net(x)  # folds the weights outside the measured calls
        # The first bound forward allocates its activations and then the arena the later ones keep
        # them in (test_forward_arena.py), which counts as memory they hold.
        peaks = [peak_cpu_bytes(lambda: net(x), lambda: held_bytes(net)) for _ in range(3)]
        eager = peak_cpu_bytes(lambda: reference_net(x))
    stem_block_out = 16 * 112 * 112 * 4  # the one tensor the bound is made of, with the next block's output
    for peak in peaks:
        assert stem_block_out <= peak <= 1.25 * 2 ** 20
        assert eager > 8 * peak


# The scopes of a converted MobileNetV2's stages inside its one network call (csrc/cpu/network.cpp).
STAGE_SCOPE = "mnv2_fused.mobilenet_v2_forward: "
STAGES = ["stem+block 0"] + [f"block {i}" for i in range(1, 17)] + ["head+pool", "classifier"]


def test_profiler_shows_each_stage_of_a_whole_network_forward(reference_net):
    """The network op runs every stage inside its one call: each stage has a profiler scope of its
    own inside the op's, in order, named as benchmarks/stages.py names the stages."""
    net = convert(copy.deepcopy(reference_net))
    x = make_input((1, 3, 64, 64), "channels_last")
    with torch.no_grad():
        net(x)  # folds the weights outside the profiled call
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            net(x)
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    (op,) = [e for e in events if e.name == "mnv2_fused::mobilenet_v2_forward"]
    stages = [e for e in events if e.name.startswith(STAGE_SCOPE)]
    assert [e.name[len(STAGE_SCOPE):] for e in stages] == STAGES
    for e in stages:
        assert op.time_range.start <= e.time_range.start <= e.time_range.end <= op.time_range.end


class _OpNames(TorchDispatchMode):
    """Records the ops dispatched under it, and runs them."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_bound_forward_goes_through_the_dispatcher_for_modes_and_autocast(reference_net):
    """The bound forward skips the dispatcher's walk over its arguments only when nothing else
    would see the call: under a dispatch mode the mode still gets the op, and the output is the
    same; under autocast too (the op has no autocast rule: it runs in float32)."""
    net = convert(copy.deepcopy(reference_net))
    x = make_input((1, 3, 64, 64), "channels_last")
    with torch.no_grad():
        net(x)  # binds the forward's call
        direct = net(x)
        with _OpNames() as mode:
            seen = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = net(x)
    assert "mnv2_fused.mobilenet_v2_forward.default" in mode.names
    assert torch.equal(seen, direct)
    assert torch.equal(autocast, direct)  # no autocast rule for the op: it runs in float32


def test_scope_times_times_the_stages_of_one_forward(reference_net, monkeypatch):
    from mnv2_fused import _C

    monkeypatch.setenv("MNV2_FUSED_CHAIN", "full")  # a team, whatever else the machine runs

    net = convert(copy.deepcopy(reference_net))
    x = make_input((1, 3, 64, 64), "channels_last")
    with torch.no_grad():
        net(x)
        t0 = time.perf_counter()
        with scope_times(STAGE_SCOPE) as times:
            net(x)
        wall = time.perf_counter() - t0
        net(x)  # after the block: not timed
        with scope_times("a prefix no scope has") as none:
            net(x)
    assert [name[len(STAGE_SCOPE):] for name, *_ in times] == STAGES
    assert all(seconds > 0 for _, seconds, *_ in times) and sum(seconds for _, seconds, *_ in times) <= wall
    # The team's jobs, where there is a team (a stage too small to share hands out none): what the
    # leader waited in them and what ran outside them are parts of the stage's time.
    for _, seconds, jobs, waiting, outside in times:
        assert jobs >= 0 and 0 <= waiting <= seconds and 0 <= outside <= seconds
        assert jobs > 0 or waiting == 0
    if torch.get_num_threads() > 1:
        assert sum(jobs for _, _, jobs, _, _ in times) > 0
    assert none == []
    with scope_times(STAGE_SCOPE), pytest.raises(RuntimeError, match="already running"):
        with scope_times(STAGE_SCOPE):
            pass
    with pytest.raises(RuntimeError, match="no scope timer is running"):
        _C.stop_scope_timer()


@pytest.mark.skipif(os.environ.get("MNV2_FUSED_CPU_ISA") is not None, reason="already a forced instruction set")
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_other_instruction_sets(isa):
    """The kernel compiled for narrower instruction sets passes the CPU tests too (in a child
    process, since the choice is read once)."""
    probe = subprocess.run([sys.executable, "-c", "import mnv2_fused, torch; "
                            "print(torch.ops.mnv2_fused.cpu_isa())"],
                           env={**os.environ, "MNV2_FUSED_CPU_ISA": isa}, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this CPU cannot run {isa}: {probe.stderr.strip().splitlines()[-1:]}")
    assert probe.stdout.strip() == isa
    here = os.path.dirname(__file__)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          os.path.join(here, "test_cpu_kernel.py"), os.path.join(here, "test_network.py"),
                          os.path.join(here, "test_blocks.py"),
                          os.path.join(here, "test_families.py") + "::test_property_spec_cpu",
                          "-k", "not peak_memory and not trains and not triton and not cuda"],
                         env={**os.environ, "MNV2_FUSED_CPU_ISA": isa}, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


def test_forced_instruction_set_is_used():
    forced = os.environ.get("MNV2_FUSED_CPU_ISA")
    assert torch.ops.mnv2_fused.cpu_isa() == (forced or torch.ops.mnv2_fused.cpu_isa())
    assert torch.ops.mnv2_fused.cpu_isa() in ("avx512", "avx2", "generic")
