"""The inverted-residual family: every torchvision and timm model listed in the README converts,
gives the unconverted model's output, and runs one fused op per block; the general block op against
its reference over the whole spec; training and gradients through the models' own layers."""
import copy
import dataclasses
import warnings

import pytest
import torch
import torchvision
from helpers import (assert_within_terms, make_input, num_threads, randomize_bn, rel_err, summed_terms,
                     within_tolerance)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import mnv2_fused
from mnv2_fused import convert, fusion_report
from mnv2_fused.layout import for_kernel
from mnv2_fused.reference import FoldedWeights, mbconv_reference
from mnv2_fused.spec import ACTIVATIONS, SE_GATES, BlockSpec, SEWeights

timm = pytest.importorskip("timm")

TORCHVISION = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0",
               "mnasnet1_3"] + [f"efficientnet_b{i}" for i in range(8)]
TIMM = ["mobilenetv2_100", "mobilenetv2_140", "mobilenetv3_large_100", "mobilenetv3_small_100", "mnasnet_100",
        "efficientnet_b0", "efficientnet_b3", "tf_efficientnet_b0", "tf_efficientnet_b3"]
# Blocks each model has (fused, all of them), and of those, how many with squeeze-and-excite.
EXPECTED_BLOCKS = {"mobilenet_v2": 17, "mobilenet_v3_large": 15, "mobilenet_v3_small": 11, "efficientnet_b0": 16,
                   "mnasnet1_0": 16, "mobilenetv2_100": 17, "mobilenetv3_large_100": 15, "efficientnet_b0@timm": 16}
FUSED_OPS = ("mnv2_fused::inverted_residual", "mnv2_fused::mbconv", "mnv2_fused::mobilenet_v2_forward")


def build(name: str, source: str) -> torch.nn.Module:
    torch.manual_seed(0)  # layers randomize_bn leaves alone (classifiers) start alike
    model = timm.create_model(name) if source == "timm" else getattr(torchvision.models, name)()
    return randomize_bn(model, seed=1, conv_gain=1.0).eval()


def fused_calls(fn) -> int:
    with torch.profiler.profile() as prof:
        fn()
    return sum(e.name in FUSED_OPS for e in prof.events())


@pytest.mark.slow
@pytest.mark.parametrize("source,name", [("torchvision", n) for n in TORCHVISION] + [("timm", n) for n in TIMM])
def test_model_converts_and_matches(source, name):
    reference = build(name, source)
    model = convert(copy.deepcopy(reference))
    report = fusion_report(model)
    assert report.fused_blocks and not report.unfused, report
    key = name if source == "torchvision" or name not in EXPECTED_BLOCKS else f"{name}@timm"
    if key in EXPECTED_BLOCKS:
        assert len(report.fused_blocks) == EXPECTED_BLOCKS[key]
    assert list(model.state_dict()) == list(reference.state_dict())
    blocks = len(report.fused_blocks) if not report.whole_network else 1
    for size, layout in (((224, 224), "nchw"), ((97, 131), "channels_last")):
        x = make_input((1, 3, *size), layout)
        with torch.no_grad():
            assert rel_err(model(x), reference(x)) <= 1e-4, (size, layout)
    with torch.no_grad():
        assert fused_calls(lambda: model(x)) == blocks  # one fused op per block


@pytest.mark.slow
@pytest.mark.parametrize("build_model", [
    lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None),
    lambda: torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                         aux_loss=False),
], ids=["lraspp", "deeplabv3"])
def test_segmentation_models(build_model):
    torch.manual_seed(0)
    reference = randomize_bn(build_model(), seed=2, conv_gain=1.0).eval()
    model = convert(copy.deepcopy(reference))
    assert len(fusion_report(model).fused_blocks) == 15 and not fusion_report(model).unfused
    dilated = [m for m in model.modules() if isinstance(m, mnv2_fused.family_block.FusedFamilyBlock)
               and m.block[-3 if len(m.block) > 2 else 0][0].dilation != (1, 1)]
    assert dilated  # the dilated=True backbone's blocks are fused too
    x = make_input((1, 3, 97, 131))
    with torch.no_grad():
        assert rel_err(model(x)["out"], reference(x)["out"]) <= 1e-4


@pytest.mark.slow
def test_ssdlite_backbone():
    torch.manual_seed(0)
    reference = randomize_bn(torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None), seed=3, conv_gain=1.0).eval()
    model = convert(copy.deepcopy(reference))
    assert fusion_report(model).fused_blocks and not fusion_report(model).unfused
    x = make_input((1, 3, 320, 320))
    with torch.no_grad():
        ours, theirs = model.backbone(x), reference.backbone(x)
    for k in theirs:
        assert rel_err(ours[k], theirs[k]) <= 1e-4


def test_unsupported_blocks_are_named():
    model = timm.create_model("efficientnetv2_rw_t")  # FusedMBConv (EdgeResidual) stages
    reference = copy.deepcopy(model).eval()
    convert(model.eval())
    report = fusion_report(model)
    assert report.fused_blocks and any("EdgeResidual is not supported" in r for r in report.unfused.values())
    x = make_input((1, 3, 64, 64))
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) <= 1e-4


def test_training_and_gradients_unchanged():
    reference = build("efficientnet_b0", "torchvision").train()
    model = convert(copy.deepcopy(reference)).train()
    x = make_input((2, 3, 64, 64))
    torch.manual_seed(0)
    out = model(x)
    torch.manual_seed(0)
    expected = reference(x)
    assert torch.equal(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name


def test_block_whose_layer_is_replaced_runs_its_own_layers_or_says_why():
    """A fused block whose activation is swapped for one the kernels lack: "auto" runs the block's
    own layers (same output as torchvision), an explicit back end raises with the reason."""
    reference = build("mobilenet_v3_small", "torchvision")
    model = convert(copy.deepcopy(reference))
    x = make_input((1, 3, 64, 64))
    with torch.no_grad():
        model(x)  # bound
        for m in (model, reference):
            m.features[4].block[0][2] = torch.nn.GELU()
        assert rel_err(model(x), reference(x)) <= 1e-4
        model.features[4].backend = "cpu"
        with pytest.raises(RuntimeError, match="backend='cpu' cannot run this block: activation GELU"):
            model(x)


def test_fused_block_pickles_and_copies(tmp_path):
    model = convert(build("mobilenet_v3_small", "torchvision"))
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    x = make_input((1, 3, 64, 64))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(copy.deepcopy(model)(x), model(x))
    assert type(loaded.features[4]).__name__ == "FusedInvertedResidual" or "Fused" in type(loaded.features[4]).__name__


def test_routes_on_a_family_model():
    """FX and the feature extractor keep fused blocks as calls; ONNX exports the model's own layers;
    TorchScript scripts it."""
    from torchvision.models.feature_extraction import create_feature_extractor

    reference = build("efficientnet_b0", "torchvision")
    model = convert(copy.deepcopy(reference))
    x = make_input((1, 3, 64, 64))
    nodes = {"features.3": "c3", "features.5": "c5"}
    with torch.no_grad():
        ours = create_feature_extractor(model, nodes)(x)
        theirs = create_feature_extractor(reference, nodes)(x)
        for k in theirs:
            assert rel_err(ours[k], theirs[k]) <= 1e-4
        assert fused_calls(lambda: torch.fx.symbolic_trace(model)(x)) == 16
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(model)
        assert rel_err(scripted(x), reference(x)) <= 1e-4


def test_drop_in_class_for_torchvision_mbconv():
    from torchvision.models.efficientnet import MBConv, MBConvConfig

    cls = mnv2_fused.fused_class(MBConv)
    cnf = MBConvConfig(6, 5, 2, 24, 40, 1, 1.0, 1.0)
    block = cls(cnf, 0.0, torch.nn.BatchNorm2d).eval()
    reference = MBConv(cnf, 0.0, torch.nn.BatchNorm2d).eval()
    reference.load_state_dict(block.state_dict())
    x = make_input((2, 24, 17, 15))
    with torch.no_grad():
        assert rel_err(block(x), reference(x)) <= 1e-5
    assert isinstance(block, MBConv) and block.backend == "auto"


# -- the general block op over the whole spec ----------------------------------------------------
@st.composite
def specs(draw, max_channels=48, max_side=14):
    cin = draw(st.integers(1, max_channels))
    expand = draw(st.booleans())
    hidden = draw(st.integers(1, 3 * max_channels)) if expand else cin
    stride = draw(st.sampled_from([1, 2]))
    cout = draw(st.one_of(st.just(cin), st.integers(1, max_channels)))
    spec = BlockSpec(kernel_size=draw(st.sampled_from([3, 5, 7])), stride=stride,
                     dilation=1 if stride == 2 else draw(st.sampled_from([1, 2])),
                     same_padding=draw(st.booleans()), activation=draw(st.sampled_from(ACTIVATIONS)),
                     se_activation=draw(st.sampled_from(["relu", "silu"])), se_gate=draw(st.sampled_from(SE_GATES)),
                     residual=stride == 1 and cin == cout and draw(st.booleans()),
                     squeeze_excite=draw(st.booleans()))
    shape = (draw(st.integers(1, 3)), cin, draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    layout = draw(st.sampled_from(["nchw", "channels_last", "noncontig"]))
    return spec, hidden, cout, expand, shape, layout, draw(st.integers(0, 2**16))


def random_weights(spec, cin, hidden, cout, expand, seed):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale):
        return torch.randn(*shape, generator=g) * scale

    k = spec.kernel_size
    w = FoldedWeights(r(hidden, cin, scale=cin ** -0.5) if expand else None, r(hidden, scale=0.3) if expand else None,
                      r(hidden, k, k, scale=1.0 / k), r(hidden, scale=0.3), r(cout, hidden, scale=hidden ** -0.5),
                      r(cout, scale=0.3))
    se = None
    if spec.squeeze_excite:
        red = max(1, hidden // 4)
        se = SEWeights(r(red, hidden, scale=hidden ** -0.5), r(red, scale=0.3), r(hidden, red, scale=red ** -0.5),
                       r(hidden, scale=0.3))
    return w, se


def spec_projection_terms(x64, w64, se64, spec):
    """The size of the terms each output sums, as helpers.projection_terms gives it for torchvision
    blocks: sum_k |w_k| |h_k| over the hidden channels, plus |bias| and |x| where the block adds its
    input. h is the block's own output with an identity projection."""
    hidden = w64.w_proj.shape[1]
    identity = w64._replace(w_proj=torch.eye(hidden, dtype=torch.float64),
                            b_proj=torch.zeros(hidden, dtype=torch.float64))
    h = mbconv_reference(x64, identity, se64, dataclasses.replace(spec, residual=False))
    return summed_terms(h, w64.w_proj, w64.b_proj, x64 if spec.residual else None)


def run_spec_case(backend, case, cached_layout=False):
    """Against the float64 reference, within the tolerance of helpers.within_tolerance (PyTorch's
    own float32 error where that is larger), else against the size of the terms summed:
    a lone output pixel can cancel to a thousandth of its terms, and PyTorch's own error there
    depends on its summation order on the machine at hand. cached_layout: the weights as the modules
    cache them for the CPU kernel (matrices packed)."""
    spec, hidden, cout, expand, shape, layout, seed = case
    w, se = random_weights(spec, shape[1], hidden, cout, expand, seed)
    x = make_input(shape, layout, seed=seed)
    out = mnv2_fused.ops.run_mbconv(x, for_kernel(w) if cached_layout else w, se, spec, backend)
    w64 = FoldedWeights(*[None if t is None else t.double() for t in w])
    se64 = None if se is None else SEWeights(*[t.double() for t in se])
    ref = mbconv_reference(x.double(), w64, se64, spec)
    assert out.shape == ref.shape
    if not within_tolerance(out, ref, lambda: mbconv_reference(x, w, se, spec)):
        assert_within_terms(out, ref, spec_projection_terms(x.double(), w64, se64, spec))


# One output pixel summing 115 hidden channels to about 1e-3 of their size: the portable kernel's
# error 1.4e-5; PyTorch's own in float32 1.1e-5 on one machine, 1.3e-6 on another.
CANCELLING = (BlockSpec(kernel_size=7, stride=2, activation="silu", se_activation="relu", se_gate="sigmoid",
                        squeeze_excite=True), 115, 1, True, (1, 1, 1, 1), "nchw", 409)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
@example(CANCELLING)
def test_property_spec_cpu(case):
    run_spec_case("cpu", case)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs(max_channels=20, max_side=7))
def test_property_spec_triton(case):
    pytest.importorskip("triton")
    run_spec_case("triton", case)


@pytest.mark.parametrize("shape,hidden,expand", [((2, 16, 96, 96), 96, True), ((2, 40, 14, 14), 240, True),
                                                 ((2, 64, 7, 7), 128, True), ((1, 64, 7, 7), 128, True),
                                                 ((1, 64, 5, 5), 128, True), ((2, 24, 112, 112), 24, False),
                                                 ((2, 24, 14, 14), 24, False)],
                         ids=["recomputed", "kept_gate_in_weights_and_rows", "kept_gate_in_rows",
                              "kept_column_parts_gate_in_weights", "kept_column_parts_gate_in_row_copies",
                              "no_expand_recomputed", "no_expand_kept"])
def test_squeeze_excite_second_pass_every_way(shape, hidden, expand):
    """The CPU kernel's second squeeze-and-excite pass runs the block again when the depthwise
    output is large (here 96 x 96 x 96 floats per image, past 2 MiB and the block's input and
    output; without an expand layer, past 2 MiB for the whole batch), and projects the kept output
    otherwise, in items of up to 64 rows of one image: with the gate in a copy of the projection's
    weight (an item with more rows than output channels: 64 of 196 pixels, 40 channels) or in the
    kept rows (fewer: the last 4 of those; 49 pixels, 64 channels), or, with fewer items than
    threads (one 7x7 or 5x5 image on two), in column parts of 32 channels that each gate their own
    columns of the weight (49 rows) or their own copy of the rows (25): each against the
    reference, with the weights as given and as the modules cache them."""
    spec = BlockSpec(kernel_size=5, activation="silu", se_activation="silu", residual=True, squeeze_excite=True)
    with num_threads(2):
        for cached_layout in (False, True):
            run_spec_case("cpu", (spec, hidden, shape[1], expand, shape, "channels_last", 3), cached_layout)


@pytest.mark.parametrize("batch", [1, 3])
def test_squeeze_excite_output_is_the_same_every_call(batch):
    """The workers claim runs of tiles from a shared counter, so which worker adds up which part of
    the squeeze-and-excite's sums changes from call to call; the sums are grouped per run and
    added in a fixed order, so the gate, and the output, do not change. (Grouped per worker they
    differed in their last bits from call to call.)"""
    reference = randomize_bn(torchvision.models.mobilenet_v3_large(), seed=3).eval()
    fused = convert(copy.deepcopy(reference)).eval()
    x = make_input((batch, 3, 224, 224), "channels_last")
    with torch.no_grad(), num_threads(2):
        y = reference.features[:6](x).contiguous(memory_format=torch.channels_last)
        # 40 -> 40, 5x5, SE, at 28x28: large enough that the threads split the tiles, not the
        # hidden channels
        block, ref = fused.features[6], reference.features[6](y)
        outs = [block(y) for _ in range(40)]
    assert rel_err(outs[0], ref) <= 1e-4
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_cuda_backend_names_what_it_lacks():
    spec = BlockSpec(kernel_size=5, activation="silu", squeeze_excite=True)
    reason = mnv2_fused.why_not("cuda", torch.empty(1, 8, 4, 4, device="meta"), spec)
    assert "a 5x5 depthwise" in reason or "CUDA tensors" in reason
    x = torch.empty(1, 8, 4, 4)
    assert mnv2_fused.select_backend("auto", x, spec) == "cpu"
