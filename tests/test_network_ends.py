"""The stem (3x3), the last 1x1 convolution and the classifier's Linear layers of torchvision's
EfficientNet and MobileNetV3, fused in place by convert() (mnv2_fused/network_ends.py): outputs,
what runs, the routes that take the layers' own forward, cached weights following edits, pickling
and the ops."""
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import make_input, rel_err
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from mnv2_fused import convert, fusion_report
from mnv2_fused.bench.models import randomize
from mnv2_fused.bench.measure import native_stderr_silenced
from mnv2_fused.layout import conv3x3_layout, pack_columns
from mnv2_fused.network_ends import FusedLayer, conv_norm_act_reason, fused_layer_class
from mnv2_fused.reference import activate

# The layers fused in each network, by name: the stem (a call of mnv2_fused.conv3x3), the head (of
# mnv2_fused.pointwise) and the classifier (of mnv2_fused.linear each).
NETWORKS = {
    "efficientnet_b0": ["features.0", "features.8", "classifier.1"],
    "mobilenet_v3_large": ["features.0", "features.16", "classifier.0", "classifier.3"],
    "mobilenet_v3_small": ["features.0", "features.12", "classifier.0", "classifier.3"],
}


def random_net(name):
    return randomize(getattr(torchvision.models, name)(), seed=1, conv_gain=1.0).eval()


@pytest.mark.parametrize("name", list(NETWORKS))
def test_converted_networks_fuse_their_ends_and_match(name):
    reference = random_net(name)
    net = convert(copy.deepcopy(reference))
    assert fusion_report(net).fused_layers == NETWORKS[name]
    for path in NETWORKS[name]:
        layer = net.get_submodule(path)
        assert isinstance(layer, FusedLayer) and isinstance(layer, type(reference.get_submodule(path)))
    assert list(net.state_dict()) == list(reference.state_dict())
    for shape, layout in (((2, 3, 224, 224), "nchw"), ((1, 3, 97, 131), "channels_last")):
        x = make_input(shape, layout)
        with torch.no_grad():
            assert rel_err(net(x), reference(x)) <= 1e-4


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_large"])
def test_the_ends_are_gemm_calls(name):
    net = convert(random_net(name))
    x = make_input((1, 3, 96, 96), "channels_last")
    with torch.no_grad(), native_stderr_silenced(), torch.profiler.profile() as prof:
        net(x)
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("mnv2_fused::conv3x3") == 1 and calls.get("mnv2_fused::pointwise") == 1
    assert calls.get("mnv2_fused::linear") == len(NETWORKS[name]) - 2
    assert "aten::addmm" not in calls and "aten::convolution" not in calls


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, None])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
def test_drop_in_pointwise_layer_every_activation(act, layout):
    torch.manual_seed(0)
    layer = Conv2dNormActivation(24, 40, kernel_size=1, activation_layer=act)
    fused = fused_layer_class(Conv2dNormActivation)(24, 40, kernel_size=1, activation_layer=act)
    fused.load_state_dict(layer.state_dict())
    for m in (layer, fused):
        bn = m[1]
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
        m.eval()
    fused.load_state_dict(layer.state_dict())
    x = make_input((3, 24, 7, 5), layout)
    with torch.no_grad():
        out = fused(x)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert rel_err(out, layer(x)) <= 1e-5
        empty = fused(torch.zeros(0, 24, 7, 5))
    assert empty.shape == (0, 40, 7, 5)


def _randomized_eval(*modules):
    for m in modules:
        bn = m[1]
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
        m.eval()


@pytest.mark.parametrize("act", [nn.ReLU, nn.SiLU, nn.Hardswish, None])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
def test_drop_in_stem_layer(act, stride, layout):
    torch.manual_seed(0)
    layer = Conv2dNormActivation(3, 24, kernel_size=3, stride=stride, activation_layer=act)
    fused = fused_layer_class(Conv2dNormActivation)(3, 24, kernel_size=3, stride=stride, activation_layer=act)
    _randomized_eval(layer)
    fused.load_state_dict(layer.state_dict())
    fused.eval()
    for shape in ((2, 3, 17, 12), (1, 3, 1, 1), (1, 3, 2, 5)):
        x = make_input(shape, layout)
        with torch.no_grad(), native_stderr_silenced(), torch.profiler.profile() as prof:
            out = fused(x)
        assert {e.key for e in prof.key_averages()} >= {"mnv2_fused::conv3x3"}
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert rel_err(out, layer(x)) <= 1e-5
    with torch.no_grad():
        assert fused(torch.zeros(0, 3, 8, 8)).shape == (0, 24, 8 // stride, 8 // stride)


def test_other_convolutions_run_their_own_layers():
    torch.manual_seed(0)
    for kwargs, why in (({"kernel_size": 3, "dilation": 2}, "neither a plain 1x1"),
                        ({"kernel_size": 3, "groups": 3}, "neither a plain 1x1"),
                        ({"kernel_size": 5}, "neither a plain 1x1"),
                        ({"kernel_size": 3, "stride": 3}, "neither a plain 1x1")):
        layer = Conv2dNormActivation(3, 6, **kwargs)
        assert why in conv_norm_act_reason(layer)
        fused = fused_layer_class(Conv2dNormActivation)(3, 6, **kwargs)
        _randomized_eval(layer)
        fused.load_state_dict(layer.state_dict())
        fused.eval()
        x = torch.randn(1, 3, 9, 9)
        with torch.no_grad(), native_stderr_silenced(), torch.profiler.profile() as prof:
            out = fused(x)
        assert not any(e.key.startswith("mnv2_fused::") for e in prof.key_averages())
        assert torch.equal(out, layer(x))


@pytest.mark.parametrize("act", ["none", "relu", "relu6", "silu", "hardswish"])
def test_conv3x3_op_against_pytorch(act):
    g = torch.Generator().manual_seed(4)
    for cin, cout, stride, shape in ((3, 16, 2, (2, 224, 224)), (3, 32, 2, (1, 97, 131)), (5, 20, 1, (1, 9, 7)),
                                     (8, 17, 1, (3, 6, 5)), (1, 3, 2, (1, 1, 1)), (3, 40, 1, (1, 3, 300))):
        x = torch.randn(shape[0], cin, *shape[1:], generator=g)
        w, b = torch.randn(cout, cin, 3, 3, generator=g), torch.randn(cout, generator=g)
        expected = activate(F.conv2d(x, w, b, stride=stride, padding=1), act)
        for xl in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
            for wl in (w, conv3x3_layout(w)):
                out = torch.ops.mnv2_fused.conv3x3(xl, wl, b, stride, act)
                assert out.is_contiguous(memory_format=torch.channels_last)
                assert rel_err(out, expected) <= 1e-5
    x = torch.randn(2, 3, 11, 10)
    torch.library.opcheck(torch.ops.mnv2_fused.conv3x3.default, (x, conv3x3_layout(torch.randn(8, 3, 3, 3)),
                                                                 torch.randn(8), 2, act))


def test_conv3x3_op_rejects_bad_arguments():
    x, w, b = torch.randn(1, 3, 8, 8), torch.randn(8, 3, 3, 3), torch.randn(8)
    conv = torch.ops.mnv2_fused.conv3x3
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        conv(x, w, b, 3)
    with pytest.raises(ValueError, match=r"w must have shape \[8, 3, 3, 3\], got \[8, 4, 3, 3\]"):
        conv(x, torch.randn(8, 4, 3, 3), b, 1)
    with pytest.raises(ValueError, match="x must be 4-D"):
        conv(torch.randn(3, 8, 8), w, b, 1)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        conv(x, w, b, 1, "gelu")
    with pytest.raises(TypeError, match="float32 only"):
        conv(x.double(), w.double(), b.double(), 1)


def test_layers_bind_their_op_and_see_edits_after():
    reference = random_net("mobilenet_v3_small")
    net = convert(copy.deepcopy(reference))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        net(x)
        for path in NETWORKS["mobilenet_v3_small"]:
            assert net.get_submodule(path)._fused_bound._call[0] is not None, path  # later forwards: one C++ call
        assert rel_err(net(x), reference(x)) <= 1e-4
        for m in (net, reference):
            m.features[0][1].running_mean.add_(0.5)  # in place, after binding
            m.classifier[3].bias.mul_(-1)
        assert rel_err(net(x), reference(x)) <= 1e-4
        # Inputs the bound calls do not take go the full way: other shapes, float64, gradients.
        lin, lin_fused = reference.classifier[0], net.classifier[0]
        for v in (torch.randn(2, 3, 576), torch.randn(576), torch.randn(4, 576).double()):
            assert rel_err(lin_fused.to(v.dtype)(v), lin.to(v.dtype)(v)) <= 1e-5
        lin.float(), lin_fused.float()
    v = torch.randn(3, 576, requires_grad=True)
    lin_fused(v).sum().backward()
    assert v.grad is not None


@pytest.mark.parametrize("act", ["none", "relu6", "hardswish", "silu"])
def test_pointwise_op_against_pytorch(act):
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(3, 40, 7, 5, generator=g), torch.randn(70, 40, generator=g), torch.randn(70, generator=g)
    expected = activate(F.conv2d(x, w[:, :, None, None], b), act)
    for layout in ("nchw", "channels_last", "noncontig"):
        xl = make_input(x.shape, layout)
        xl.copy_(x)
        for weight in (w, pack_columns(w)):
            out = torch.ops.mnv2_fused.pointwise(xl, weight, b, act)
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert rel_err(out, expected) <= 1e-5
    torch.library.opcheck(torch.ops.mnv2_fused.pointwise.default, (x, pack_columns(w), b, act))
    with pytest.raises(ValueError, match="w must have shape"):
        torch.ops.mnv2_fused.pointwise(x, torch.randn(70, 41), b, act)


def test_drop_in_linear_any_leading_shape_and_no_bias():
    torch.manual_seed(0)
    for bias in (True, False):
        lin = nn.Linear(33, 21, bias=bias)
        fused = fused_layer_class(nn.Linear)(33, 21, bias=bias)
        fused.load_state_dict(lin.state_dict())
        for shape in ((4, 33), (2, 3, 33), (33,)):
            x = torch.randn(shape)
            with torch.no_grad():
                assert rel_err(fused(x), lin(x)) <= 1e-5


def test_training_gradients_and_other_dtypes_take_the_layers_own_forward():
    reference = random_net("mobilenet_v3_small")
    net = convert(copy.deepcopy(reference))
    x = torch.randn(2, 3, 64, 64)
    out, ref = net(x), reference(x)  # gradients enabled: the layers' own forward
    out.sum().backward()
    ref.sum().backward()
    assert torch.equal(out, ref)
    for path in NETWORKS["mobilenet_v3_small"]:
        assert torch.equal(net.get_submodule(path).get_parameter(_a_weight(path)).grad,
                           reference.get_submodule(path).get_parameter(_a_weight(path)).grad)
    with torch.no_grad():
        double = copy.deepcopy(net).double()
        assert rel_err(double(x.double()), copy.deepcopy(reference).double()(x.double())) <= 1e-12


def _a_weight(path: str) -> str:
    return "0.weight" if path.startswith("features") else "weight"


def test_cached_weights_follow_edits_and_state_dicts():
    reference = random_net("efficientnet_b0")
    net = convert(copy.deepcopy(reference))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        net(x)  # folds and caches
        for m in (net, reference):
            m.classifier[1].weight.mul_(1.5)  # in place
            m.features[8][1].running_var.mul_(2.0)
        assert rel_err(net(x), reference(x)) <= 1e-4
        state = {k: v * 0.9 if v.is_floating_point() else v for k, v in reference.state_dict().items()}
        reference.load_state_dict(state)
        net.load_state_dict(state)
        assert rel_err(net(x), reference(x)) <= 1e-4


def test_pickle_script_and_backend_choice():
    reference = random_net("mobilenet_v3_small")
    net = convert(copy.deepcopy(reference))
    x = torch.randn(1, 3, 64, 64)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    again = pickle.loads(pickle.dumps(net))
    scripted = torch.jit.script(net)
    with torch.no_grad():
        expected = reference(x)
        for m in (loaded, again, scripted):
            assert rel_err(m(x), expected) <= 1e-4
    assert isinstance(loaded.features[12], FusedLayer)
    # The ends run on the CPU kernels only: other back ends leave them as they are.
    other = convert(copy.deepcopy(reference), backend="reference")
    assert fusion_report(other).fused_layers == []
    with pytest.raises(ValueError, match="CPU kernels only"):
        fused_layer_class(nn.Linear)(3, 4, backend="triton")


def test_explicit_cpu_backend_rejects_what_it_cannot_run():
    fused = fused_layer_class(nn.Linear)(8, 4, backend="cpu").eval()
    with torch.no_grad():
        fused(torch.randn(2, 8))
        with pytest.raises(RuntimeError, match="float32 only"):
            fused(torch.randn(2, 8, dtype=torch.float64))
    auto = fused_layer_class(nn.Linear)(8, 4).eval()
    with torch.no_grad():
        x = torch.randn(2, 8, dtype=torch.float64)
        assert torch.equal(auto.double()(x), F.linear(x, auto.weight, auto.bias))


@pytest.mark.parametrize("act", ["none", "relu", "relu6", "silu", "hardswish", "sigmoid", "hardsigmoid"])
def test_linear_op_activations(act):
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(5, 40, generator=g), torch.randn(70, 40, generator=g), torch.randn(70, generator=g)
    expected = activate(F.linear(x, w, b), act)
    for weight in (w, pack_columns(w)):
        assert rel_err(torch.ops.mnv2_fused.linear(x, weight, b, act), expected) <= 1e-5
    torch.library.opcheck(torch.ops.mnv2_fused.linear.default, (x, pack_columns(w), b, act))


def test_linear_op_rejects_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'gelu'; expected none, relu"):
        torch.ops.mnv2_fused.linear(torch.randn(2, 3), torch.randn(4, 3), torch.randn(4), "gelu")
