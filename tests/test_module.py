"""FusedInvertedResidual as a drop-in: whole networks, state_dict, cache, training, errors."""
import copy

import pytest
import torch
import torchvision
from helpers import make_block, make_input, randomize_bn, rel_err
from torchvision.models.mobilenetv2 import InvertedResidual

import mnv2_fused
from mnv2_fused import FusedInvertedResidual, convert


@pytest.fixture(scope="module")
def reference_net():
    return randomize_bn(torchvision.models.mobilenet_v2(), seed=1).eval()


@pytest.mark.slow
@pytest.mark.parametrize("size", [(224, 224), (97, 131)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("how", ["block_arg", "convert"])
def test_whole_network_matches_torchvision(reference_net, size, layout, how):
    if how == "block_arg":
        net = torchvision.models.mobilenet_v2(block=FusedInvertedResidual).eval()
        net.load_state_dict(reference_net.state_dict())
    else:
        net = convert(copy.deepcopy(reference_net))
    assert sum(isinstance(m, FusedInvertedResidual) for m in net.modules()) == 17
    x = make_input((2, 3, *size), layout)
    with torch.no_grad():
        ref = reference_net(x)
        out = net(x)
    assert rel_err(out, ref) <= 1e-4


def test_profiler_shows_fused_op(reference_net):
    net = convert(copy.deepcopy(reference_net))
    x = make_input((1, 3, 64, 64))
    with torch.no_grad(), torch.profiler.profile() as prof:
        net(x)
        net(x)  # the second through the bound C++ call (FastCall): still the op, seen by profilers
    names = [e.name for e in prof.events()]
    # One call runs every stage (stem + first block, 16 blocks, head + pool, classifier).
    assert names.count("mnv2_fused::mobilenet_v2_forward") == 2
    # No unfused convolution ran at all: the stem and the head are fused too.
    assert sum("convolution" == n.split("::")[-1] for n in names) == 0


def test_profiler_shows_each_fused_stage_when_blocks_pick_their_backend(reference_net):
    net = convert(copy.deepcopy(reference_net), backend="cpu")
    x = make_input((1, 3, 64, 64))
    with torch.no_grad():
        net(x)  # the one-call path first: changing a backend afterwards must still be seen
    net.features[5].backend = "reference"  # one block off the CPU kernel: the stages run one by one
    with torch.no_grad(), torch.profiler.profile() as prof:
        out = net(x)
        ref = reference_net(x)
    assert rel_err(out, ref) <= 1e-4
    names = [e.name for e in prof.events()]
    assert names.count("mnv2_fused::stem_inverted_residual") == 1
    assert names.count("mnv2_fused::inverted_residual") == 15
    assert names.count("mnv2_fused::pointwise_relu6_mean") == 1
    assert names.count("mnv2_fused::linear") == 1


def test_block_fast_path_sees_every_change():
    # After a first inference call binds the block to C++ (bound.py), every later call must
    # still honour weight edits, backend changes, bad inputs, gradients, copies and refresh().
    tv = make_block(24, 24, 1, 6, seed=3)
    fused = FusedInvertedResidual.from_block(copy.deepcopy(tv)).eval()
    x = make_input((2, 24, 9, 7), "channels_last")
    with torch.no_grad():
        assert rel_err(fused(x), tv(x)) <= 1e-5
        assert fused._fused_bound._call[0] is not None
        with torch.profiler.profile() as prof:
            assert rel_err(fused(x), tv(x)) <= 1e-5
        assert [e.name for e in prof.events()].count("mnv2_fused::inverted_residual") == 1
        for m in (fused, tv):
            m.conv[0][1].running_mean.add_(0.5)  # in place: the version moves
        assert rel_err(fused(x), tv(x)) <= 1e-5
        fused.backend = "reference"
        with torch.profiler.profile() as prof:
            assert rel_err(fused(x), tv(x)) <= 1e-5
        assert "mnv2_fused::inverted_residual" not in [e.name for e in prof.events()]
        fused.backend = "auto"
        fused(x)
        with pytest.raises(ValueError, match="the input has 16 channels, 24 expected"):
            fused(make_input((2, 16, 9, 7)))
        with pytest.raises(ValueError, match="4-D input"):
            fused(x[0])
        with pytest.raises(TypeError, match="does not match the weights"):
            fused(x.double())
        fused.double()  # drops the bound call with the cached weights
        assert rel_err(fused(x.double()), tv.double()(x.double())) <= 1e-12
        tv.float()
        fused.float()
        fused(x)
        assert rel_err(copy.deepcopy(fused)(x), tv(x)) <= 1e-5
    xg = x.clone().requires_grad_()
    fused(xg).sum().backward()  # gradients needed: torchvision's math, never the bound call
    assert xg.grad is not None
    with pytest.raises(ValueError, match="unknown backend"):
        fused.backend = "gpu"


def test_state_dict_keys_match_torchvision():
    for cin, cout, s, t in [(32, 16, 1, 1), (16, 24, 2, 6)]:
        tv = InvertedResidual(cin, cout, s, t)
        fused = FusedInvertedResidual(cin, cout, s, t)
        assert list(tv.state_dict()) == list(fused.state_dict())
        assert [v.shape for v in tv.state_dict().values()] == [v.shape for v in fused.state_dict().values()]
        fused.load_state_dict(tv.state_dict())  # strict


def test_cache_refresh_after_load_state_dict_and_inplace_edit():
    a, b = make_block(24, 24, 1, 6, seed=1), make_block(24, 24, 1, 6, seed=2)
    fused = FusedInvertedResidual(24, 24, 1, 6).eval()
    fused.load_state_dict(a.state_dict())
    x = make_input((1, 24, 8, 8))
    with torch.no_grad():
        assert rel_err(fused(x), a(x)) <= 1e-5
        fused.load_state_dict(b.state_dict())
        assert rel_err(fused(x), b(x)) <= 1e-5
        fused.conv[1][1].running_var.mul_(3.0)  # in-place edit of a BN buffer
        b.conv[1][1].running_var.mul_(3.0)
        assert rel_err(fused(x), b(x)) <= 1e-5
        fused.conv[2].weight.add_(0.1)
        b.conv[2].weight.add_(0.1)
        assert rel_err(fused(x), b(x)) <= 1e-5
        fused.conv[2].weight.data.mul_(2.0)  # .data bypasses version tracking: refresh() is the documented way
        b.conv[2].weight.data.mul_(2.0)
        fused.refresh()
        assert rel_err(fused(x), b(x)) <= 1e-5


def test_cache_refresh_after_dtype_round_trip():
    block = make_block(16, 16, 1, 6)
    fused = FusedInvertedResidual.from_block(copy.deepcopy(block)).eval()
    x = make_input((1, 16, 6, 6))
    with torch.no_grad():
        fused(x)
        fused.double()
        assert rel_err(fused(x.double()), block.double()(x.double())) <= 1e-12
        fused.float()
        block.float()
        assert rel_err(fused(x), block(x)) <= 1e-5


def test_training_mode_matches_torchvision_gradients():
    tv = make_block(16, 16, 1, 6).train()
    fused = FusedInvertedResidual.from_block(copy.deepcopy(tv)).train()
    x1 = make_input((4, 16, 8, 8)).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    tv(x1).square().sum().backward()
    fused(x2).square().sum().backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)
    for p1, p2 in zip(tv.parameters(), fused.parameters()):
        assert torch.allclose(p1.grad, p2.grad, rtol=1e-5, atol=1e-6)


def test_eval_with_grad_uses_reference_path():
    tv = make_block(8, 8, 1, 6)
    fused = FusedInvertedResidual.from_block(copy.deepcopy(tv)).eval()
    x = make_input((1, 8, 5, 5)).requires_grad_()
    fused(x).sum().backward()  # the fused op has no autograd formula; this must take the reference path
    assert x.grad is not None


def test_backend_errors_name_backend_and_reason():
    fused = FusedInvertedResidual.from_block(make_block(8, 8, 1, 6), backend="cuda").eval()
    x = make_input((1, 8, 5, 5))
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"backend='cuda'.*CUDA tensors"):
        fused(x)
    fused = FusedInvertedResidual.from_block(make_block(8, 8, 1, 6).double(), backend="cpu").eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"backend='cpu'.*float32 only"):
        fused(x.double())
    with pytest.raises(ValueError, match="unknown backend"):
        FusedInvertedResidual(8, 8, 1, 6, backend="tpu")


def test_auto_falls_back_to_reference_for_float64():
    tv = make_block(8, 8, 1, 6).double()
    fused = FusedInvertedResidual.from_block(copy.deepcopy(tv)).eval()
    x = make_input((1, 8, 5, 5), dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(fused(x), tv(x)) <= 1e-12


@pytest.mark.parametrize("bad,exc,msg", [
    (lambda: torch.randn(1, 3, 5, 5), ValueError, "the input has 3 channels, 8 expected"),
    (lambda: torch.randn(8, 5, 5), ValueError, "4-D"),
    (lambda: torch.ones(1, 8, 5, 5, dtype=torch.int64), TypeError, "floating-point"),
    (lambda: torch.randn(1, 8, 5, 5, dtype=torch.complex64), TypeError, "floating-point"),
    (lambda: torch.randn(1, 8, 5, 5, dtype=torch.float64), TypeError, "does not match"),
    (lambda: torch.randn(1, 8, 5, 5, device="meta"), RuntimeError, "is on meta"),
    (lambda: [1, 2, 3], TypeError, "torch.Tensor"),
])
def test_bad_input_raises_clear_errors(bad, exc, msg):
    fused = FusedInvertedResidual.from_block(make_block(8, 8, 1, 6)).eval()
    with torch.no_grad(), pytest.raises(exc, match=msg):
        fused(bad())


def test_op_rejects_bad_weights():
    w = mnv2_fused.fold_block(make_block(8, 8, 1, 6).conv)
    x = make_input((1, 8, 5, 5))
    with pytest.raises(ValueError, match="w_expand must have shape"):
        torch.ops.mnv2_fused.inverted_residual(x[:, :4], *w, 1, False)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        torch.ops.mnv2_fused.inverted_residual(x, *w, 3, False)
    with pytest.raises(TypeError, match="dtype"):
        torch.ops.mnv2_fused.inverted_residual(x, w.w_expand.double(), *w[1:], 1, False)
    with pytest.raises(ValueError, match="residual block needs stride 1"):
        torch.ops.mnv2_fused.inverted_residual(x, *w, 2, True)
    empty = mnv2_fused.FoldedWeights(torch.zeros(0, 8), torch.zeros(0), torch.zeros(0, 3, 3), torch.zeros(0),
                                     torch.zeros(8, 0), torch.zeros(8))
    with pytest.raises(ValueError, match="hidden widths must be positive"):
        torch.ops.mnv2_fused.inverted_residual(x, *empty, 1, True)


def test_nan_and_inf_propagate_like_torchvision():
    tv = make_block(8, 8, 1, 6)
    fused = FusedInvertedResidual.from_block(copy.deepcopy(tv), backend="cpu").eval()
    x = make_input((2, 8, 7, 7))
    x[0, 3, 2, 2] = float("nan")
    x[1, 1, 4, 5] = float("inf")
    with torch.no_grad():
        ref, out = tv(x), fused(x)
    assert torch.equal(ref.isnan(), out.isnan())
    assert torch.equal(ref.isinf(), out.isinf())
    finite = ref.isfinite()
    assert rel_err(out[finite], ref[finite]) <= 1e-5


def test_convert_keeps_weights_and_returns_model(reference_net):
    net = copy.deepcopy(reference_net)
    keys = list(net.state_dict())
    weight = net.features[3].conv[0][0].weight
    assert convert(net, backend="cpu") is net
    assert list(net.state_dict()) == keys
    assert net.features[3].conv[0][0].weight is weight
    assert net.features[3].backend == "cpu"
    assert not any(isinstance(m, InvertedResidual) for m in net.modules())
    single = convert(make_block(8, 8, 1, 6))
    assert isinstance(single, FusedInvertedResidual)


def test_import_does_not_need_torchvision():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torchvision'] = None; import mnv2_fused, torch; "
            "m = mnv2_fused.FusedInvertedResidual(8, 8, 1, 6).eval(); "
            "torch.no_grad().__enter__(); print(m(torch.randn(1, 8, 4, 4)).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch.Size([1, 8, 4, 4])" in out.stdout
