"""Everything users do with a converted model: inference_mode, convert() on other torchvision
models, FX and create_feature_extractor, ONNX export, TorchScript, torch.export, wrong inputs."""
import copy
import io
import warnings

import pytest
import torch
import torchvision
from helpers import make_block, make_input, randomize_bn, rel_err
from torchvision.models.feature_extraction import create_feature_extractor

from mnv2_fused import FusedInvertedResidual, FusedMobileNetV2, convert, fusion_report

FUSED_OPS = ("mnv2_fused::inverted_residual", "mnv2_fused::mobilenet_v2_forward")


def build_mobilenet_v2():
    torch.manual_seed(0)  # the classifier's initialisation, which randomize_bn leaves alone
    return randomize_bn(torchvision.models.mobilenet_v2(), seed=11).eval()


@pytest.fixture(scope="module")
def reference_net():
    return build_mobilenet_v2()


def fused_calls(fn) -> int:
    """How many fused block or network ops fn() ran."""
    with torch.profiler.profile() as prof:
        fn()
    return sum(e.name in FUSED_OPS for e in prof.events())


# -- inference_mode -----------------------------------------------------------------------------
def test_network_built_inside_inference_mode_runs_fused(reference_net):
    x = make_input((1, 3, 64, 64))
    with torch.inference_mode():
        net = convert(build_mobilenet_v2())
        assert type(net) is FusedMobileNetV2 and net.features[2].conv[0][0].weight.is_inference()
        assert rel_err(net(x), reference_net(x)) <= 1e-4
        assert fused_calls(lambda: net(x)) == 1
    with torch.no_grad():  # and outside it, on the same inference tensors
        assert rel_err(net(x), reference_net(x)) <= 1e-4


def test_block_built_inside_inference_mode_follows_load_state_dict_and_refresh():
    a, b = make_block(16, 16, 1, 6, seed=1), make_block(16, 16, 1, 6, seed=2)
    x = make_input((2, 16, 7, 7))
    with torch.inference_mode():
        fused = FusedInvertedResidual(16, 16, 1, 6).eval()
        fused.load_state_dict(a.state_dict())
        assert rel_err(fused(x), a(x)) <= 1e-5
        assert fused_calls(lambda: fused(x)) == 1
        fused.load_state_dict(b.state_dict())  # inference tensors have no versions: the load is seen
        assert rel_err(fused(x), b(x)) <= 1e-5
        fused.conv[2].weight.mul_(2.0)  # an in-place edit of an inference tensor: refresh() is the way
        b.conv[2].weight.data.mul_(2.0)
        fused.refresh()
        assert rel_err(fused(x), b(x)) <= 1e-5


def test_network_load_state_dict_inside_inference_mode(reference_net):
    other = randomize_bn(torchvision.models.mobilenet_v2(), seed=12).eval()
    x = make_input((1, 3, 64, 64))
    with torch.inference_mode():
        net = convert(copy.deepcopy(reference_net))
        net(x)
        net.load_state_dict(other.state_dict())
        assert rel_err(net(x), other(x)) <= 1e-4


# -- convert() on models it cannot fuse -----------------------------------------------------------
class InvertedResidual(torch.nn.Module):
    """A user's own block that shares only the name with torchvision's."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return x + self.body(x)


@pytest.mark.parametrize("build,unsupported", [
    (lambda: torchvision.models.efficientnet_v2_s(), "efficientnet.FusedMBConv is not supported"),
    (lambda: torch.nn.Sequential(InvertedResidual(), torchvision.models.mobilenet_v3_small()),
     "test_routes.InvertedResidual is not supported"),
], ids=["efficientnet_v2_s", "own_block"])
def test_convert_leaves_what_it_cannot_fuse_untouched_and_says_so(build, unsupported):
    torch.manual_seed(0)
    model = randomize_bn(build(), seed=2, conv_gain=1.0).eval()
    reference = copy.deepcopy(model)
    assert convert(model) is model
    report = fusion_report(model)
    assert report.fused_blocks and not report.whole_network
    assert report.unfused and all(unsupported in r for r in report.unfused.values()), report
    x = make_input((1, 3, 64, 64))
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) <= 1e-4


def test_fusion_report_of_mobilenet_v2(reference_net, caplog):
    with caplog.at_level("INFO", logger="mnv2_fused"):
        net = convert(copy.deepcopy(reference_net))
    report = fusion_report(net)
    assert len(report.fused_blocks) == 17 and report.whole_network and not report.unfused
    assert "17 fused block(s)" in caplog.text
    assert report.fused_blocks[0] == "features.1"


def test_convert_skips_a_block_it_cannot_fuse(reference_net):
    net = copy.deepcopy(reference_net)
    dw = net.features[4].conv[1][0]
    net.features[4].conv[1][0] = torch.nn.Conv2d(dw.in_channels, dw.out_channels, 3, 1, 2, dilation=2,
                                                 groups=dw.groups, bias=False)
    ref = copy.deepcopy(net)
    convert(net)
    report = fusion_report(net)
    assert len(report.fused_blocks) == 16 and "features.4" in report.unfused
    assert "3x3 depthwise convolution" in report.unfused["features.4"]
    assert not report.whole_network  # a stage it cannot fuse: torchvision's forward, blocks fused
    with torch.no_grad():
        x = make_input((1, 3, 64, 64))
        assert rel_err(net(x), ref(x)) <= 1e-4


# -- FX ------------------------------------------------------------------------------------------
def test_fx_symbolic_trace_keeps_fused_blocks(reference_net):
    net = convert(copy.deepcopy(reference_net))
    traced = torch.fx.symbolic_trace(net)
    leaves = [n for n in traced.graph.nodes if n.op == "call_module"
              and isinstance(traced.get_submodule(n.target), FusedInvertedResidual)]
    assert len(leaves) == 17
    x = make_input((2, 3, 64, 64))
    with torch.no_grad():
        assert rel_err(traced(x), reference_net(x)) <= 1e-4
        assert fused_calls(lambda: traced(x)) == 17


def test_fx_symbolic_trace_of_a_bare_block():
    block = make_block(24, 24, 1, 6)
    traced = torch.fx.symbolic_trace(FusedInvertedResidual.from_block(copy.deepcopy(block)).eval())
    x = make_input((2, 24, 9, 9))
    with torch.no_grad():
        assert rel_err(traced(x), block(x)) <= 1e-5


def test_create_feature_extractor_on_converted_model(reference_net):
    nodes = {"features.3": "c2", "features.6": "c3", "features.13": "c4", "features.18": "c5"}
    net = convert(copy.deepcopy(reference_net))
    extractor = create_feature_extractor(net, return_nodes=nodes)
    expected = create_feature_extractor(reference_net, return_nodes=nodes)
    x = make_input((2, 3, 96, 96), "channels_last")
    with torch.no_grad():
        out, ref = extractor(x), expected(x)
        assert set(out) == set(nodes.values())
        for k in ref:
            assert rel_err(out[k], ref[k]) <= 1e-4, k
        assert fused_calls(lambda: extractor(x)) == 17  # features.1 .. features.17, to reach features.18


# -- ONNX ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript_exporter", "dynamo_exporter"])
def test_onnx_export_gives_standard_graph_that_onnxruntime_runs(reference_net, dynamo):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    net = convert(copy.deepcopy(reference_net))
    x = make_input((1, 3, 64, 64))
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net(x)  # bound to C++ first: the export must still see the standard layers
        torch.onnx.export(net, (x,), buf, dynamo=dynamo, input_names=["x"], output_names=["y"])
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(y), reference_net(x)) <= 1e-4


# -- TorchScript, torch.export ------------------------------------------------------------------
def test_torchscript_scripts_converted_model(reference_net):
    net = convert(copy.deepcopy(reference_net))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
        scripted = torch.jit.script(net)
    x = make_input((1, 3, 64, 64))
    with torch.no_grad():
        assert rel_err(scripted(x), reference_net(x)) <= 1e-4


def test_torch_export_runs_the_fused_op(reference_net):
    net = convert(copy.deepcopy(reference_net))
    x = make_input((1, 3, 64, 64))
    with torch.no_grad():
        exported = torch.export.export(net, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "mnv2_fused.mobilenet_v2_forward.default" in targets
    with torch.no_grad():
        assert rel_err(exported.module()(x), reference_net(x)) <= 1e-4


# -- wrong inputs --------------------------------------------------------------------------------
def test_network_wrong_channels_says_so(reference_net):
    net = convert(copy.deepcopy(reference_net))
    with torch.no_grad():
        for _ in range(2):  # before and after the first call binds the network to C++
            with pytest.raises(ValueError, match=r"the input has 4 channels, 3 expected"):
                net(torch.randn(1, 4, 32, 32))
            net(torch.randn(1, 3, 32, 32))
        with pytest.raises(ValueError, match="4-D input"):
            net(torch.randn(3, 32, 32))


def test_triton_without_interpreter_or_gpu_says_why(monkeypatch):
    import mnv2_fused.triton

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.setattr(mnv2_fused.triton, "INTERPRETER", False)
    fused = FusedInvertedResidual.from_block(make_block(8, 8, 1, 6), backend="triton").eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="Triton needs a GPU, or its interpreter"):
        fused(torch.randn(1, 8, 5, 5))
    assert "interpreter" in mnv2_fused.why_not("triton", torch.randn(1, 8, 5, 5))
