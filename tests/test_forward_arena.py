"""A converted MobileNetV2's arena (csrc/cpu/forward_arena.h): the memory its one-call forwards lay
their activations and scratch in, kept between them. Forwards in it give the outputs of forwards
without it, to the bit, whatever its size and however often it is resized; it is sized to one
forward's peak (rounded up to whole huge pages from half a huge page up, unless
MNV2_FUSED_HUGE_PAGES=0), counted as the model's memory, and freed on request."""
import copy
import threading

import pytest
import torch
import torchvision
from helpers import HUGE_PAGE, huge_pages_offered, make_input, randomize_bn, rel_err

from mnv2_fused import convert
from mnv2_fused.bench.measure import held_bytes, peak_cpu_bytes

STEM_BLOCK_OUT = 16 * 112 * 112 * 4  # bytes of the stem stage's output at 224x224, batch 1


@pytest.fixture(scope="module")
def reference_net():
    return randomize_bn(torchvision.models.mobilenet_v2(), seed=7).eval()


def without_arena(net, x):
    """The network op called directly: no arena is open, every activation is a new tensor."""
    w = net._bound.weights(net.features, net.classifier)
    return torch.ops.mnv2_fused.mobilenet_v2_forward(x, *w.op_arguments())


# Shapes in turn on one model: the arena is sized by the first forward of each and used by the
# next; after a smaller shape it is too small for some stages only (their outputs are then new
# tensors, the others' stay in it); it is reallocated smaller when a forward needs less than half.
SHAPES = [(1, 160, 160), (1, 160, 160), (3, 160, 160), (3, 160, 160), (1, 97, 75), (1, 97, 75), (2, 33, 41),
          (1, 160, 160), (1, 160, 160)]


@pytest.mark.parametrize("huge_pages", ["0", "1"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_forwards_in_the_arena_equal_forwards_without(reference_net, layout, huge_pages, monkeypatch):
    monkeypatch.setenv("MNV2_FUSED_HUGE_PAGES", huge_pages)
    net = convert(copy.deepcopy(reference_net))
    sizes = []
    with torch.no_grad():
        for i, (n, h, w) in enumerate(SHAPES):
            x = make_input((n, 3, h, w), layout, seed=i)
            out = net(x)
            assert torch.equal(out, without_arena(net, x)), (i, n, h, w)
            assert rel_err(out, reference_net(x)) <= 1e-4
            sizes.append(net.workspace_bytes())
    assert sizes[0] == 0 < sizes[1]  # the first forward bound the call, the second sized its arena
    assert sizes[2] > sizes[1]  # three images need more
    assert sizes[4] < sizes[3] / 2  # a smaller image less than half of that
    assert sizes[-1] == sizes[1]


def test_prepared_stages_follow_the_input_and_the_thread_count(reference_net):
    """The arena also keeps the stages' kernel calls made ready for the input's shape (their tile
    plans made for the threads there were); a forward whose input size or thread count differs
    makes them again, and every forward equals the op called directly under the same settings."""
    net = convert(copy.deepcopy(reference_net))
    threads = torch.get_num_threads()
    steps = [(2, (1, 96, 96)), (2, (1, 96, 96)), (1, (1, 96, 96)), (1, (1, 96, 96)), (3, (1, 96, 96)),
             (3, (2, 64, 80)), (3, (2, 64, 80)), (2, (1, 96, 96))]
    try:
        with torch.no_grad():
            for i, (n_threads, (n, h, w)) in enumerate(steps):
                torch.set_num_threads(n_threads)
                x = make_input((n, 3, h, w), "channels_last", seed=i)
                assert torch.equal(net(x), without_arena(net, x)), (i, n_threads, n, h, w)
    finally:
        torch.set_num_threads(threads)


def test_empty_batches_between_full_ones(reference_net):
    """Empty batches run through the bound forward and its arena, before and after full ones, and
    through the op called directly."""
    net = convert(copy.deepcopy(reference_net))
    with torch.no_grad():
        for i, n in enumerate([0, 0, 0, 2, 2, 0, 2]):
            x = make_input((n, 3, 64, 48), "channels_last", seed=i)
            out = net(x)
            assert out.shape == (n, 1000)
            assert torch.equal(out, without_arena(net, x))
            if n:
                assert rel_err(out, reference_net(x)) <= 1e-4


def test_network_op_on_float64_says_float32_only(reference_net):
    """Called directly on other dtypes, the network op stops with a clear error before it lays any
    weight out for its kernels."""
    net = convert(copy.deepcopy(reference_net))
    w = net._bound.weights(net.features, net.classifier)
    args = [[t.double() if isinstance(t, torch.Tensor) else t for t in a] if isinstance(a, list) else a
            for a in w.op_arguments()]
    with pytest.raises(TypeError, match="mobilenet_v2_forward: the CPU kernel supports float32 only"):
        torch.ops.mnv2_fused.mobilenet_v2_forward(torch.randn(1, 3, 32, 32, dtype=torch.float64), *args)


def test_arena_holds_the_forwards_activations(reference_net, monkeypatch):
    """At 224x224 the arena is the forward's peak (the paper's bound, section 5.1), and a forward in
    it allocates only its output; after release_workspace() the next forward allocates them again."""
    monkeypatch.setenv("MNV2_FUSED_HUGE_PAGES", "0")
    net = convert(copy.deepcopy(reference_net))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for _ in range(3):
            net(x)
        arena = net.workspace_bytes()
        assert STEM_BLOCK_OUT <= arena <= 1.25 * 2**20
        assert peak_cpu_bytes(lambda: net(x)) < 64 * 1024
        net.release_workspace()
        assert net.workspace_bytes() == 0
        assert STEM_BLOCK_OUT <= peak_cpu_bytes(lambda: net(x), lambda: held_bytes(net)) <= 1.25 * 2**20
        assert net.workspace_bytes() == arena
    net.refresh()  # drops the bound call, and with it the arena
    assert net.workspace_bytes() == 0


@pytest.mark.parametrize("n, h, w", [(1, 224, 224), (2, 160, 160), (1, 97, 75), (3, 64, 64)])
def test_stem_scratch_from_the_arenas_slack_adds_no_memory(reference_net, n, h, w, monkeypatch):
    """Once the arena is sized, the stem's stage (which holds only its output and scratch) takes as
    scratch what a later stage holds beyond that: the arena stays the peak of the forward without
    it (give or take its cache-line rounding), which plans the stem on its own budget."""
    monkeypatch.setenv("MNV2_FUSED_HUGE_PAGES", "0")
    net = convert(copy.deepcopy(reference_net))
    x = make_input((n, 3, h, w), "channels_last")
    with torch.no_grad():
        for _ in range(3):
            net(x)
        without = peak_cpu_bytes(lambda: without_arena(net, x))
    assert without <= net.workspace_bytes() <= without + 1024


@pytest.mark.parametrize("n, h, w", [(1, 224, 224), (3, 160, 160), (1, 97, 75)])
def test_huge_page_arena_rounds_the_exact_one_up(reference_net, n, h, w, monkeypatch):
    """By default an arena of half a huge page or more lies in whole 2 MiB huge pages, counted in
    full (batch 1 at 224x224: 2 MiB for its 1.18); a smaller one stays at its exact size. Forwards
    in either give the same outputs, to the bit."""
    if not huge_pages_offered():
        pytest.skip("the system's transparent huge pages are off or absent: arenas keep their exact size")
    x = make_input((n, 3, h, w), "channels_last")
    sizes, outputs = {}, {}
    with torch.no_grad():
        for setting in ("0", "1"):
            monkeypatch.setenv("MNV2_FUSED_HUGE_PAGES", setting)
            net = convert(copy.deepcopy(reference_net))
            for _ in range(3):
                outputs[setting] = net(x)
            sizes[setting] = net.workspace_bytes()
        assert torch.equal(outputs["1"], outputs["0"])
        assert torch.equal(outputs["1"], without_arena(net, x))
    # Both count the prepared stages' weight copies too (the stem's packed 3x3 weight, 3.4 KiB).
    exact, kept_at_most = sizes["0"], 64 * 1024
    if exact >= HUGE_PAGE / 2 + kept_at_most:
        assert exact <= sizes["1"] < exact + HUGE_PAGE and sizes["1"] % HUGE_PAGE < kept_at_most
    elif exact < HUGE_PAGE / 2:
        assert sizes["1"] == exact
    if (n, h, w) == (1, 224, 224):
        assert HUGE_PAGE <= sizes["1"] < HUGE_PAGE + kept_at_most


def test_huge_pages_switch_takes_0_or_1(reference_net, monkeypatch):
    """Any other value of MNV2_FUSED_HUGE_PAGES stops the forward that sizes the arena with a
    clear error."""
    net = convert(copy.deepcopy(reference_net))
    x = make_input((1, 3, 224, 224), "channels_last")
    monkeypatch.setenv("MNV2_FUSED_HUGE_PAGES", "yes")
    with torch.no_grad(), pytest.raises(ValueError, match="MNV2_FUSED_HUGE_PAGES must be 0 or 1, got 'yes'"):
        for _ in range(2):
            net(x)


def test_forwards_from_two_threads_share_one_model(reference_net):
    """One forward at a time uses the arena; another running meanwhile goes without it."""
    net = convert(copy.deepcopy(reference_net))
    inputs = [make_input((1 + i % 2, 3, 64, 64), seed=i) for i in range(4)]
    with torch.no_grad():
        expected = [reference_net(x) for x in inputs]
        net(inputs[0])
        errors = []

        @torch.no_grad()  # grad mode is per thread
        def work(k):
            for j in range(12):
                i = (k + j) % len(inputs)
                if not torch.equal(net(inputs[i]), without_arena(net, inputs[i])):
                    errors.append((k, j))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for x, ref in zip(inputs, expected):
            assert rel_err(net(x), ref) <= 1e-4
