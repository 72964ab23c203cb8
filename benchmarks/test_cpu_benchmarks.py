"""CPU latency and memory: fused vs torchvision eager (NCHW and channels_last) vs ONNX Runtime vs
torch.compile, per Table-2 block at 224x224 input resolution and for the whole mobilenet_v2, and
per distinct block and whole network for EfficientNet-B0 and MobileNetV3-Large.

    pytest benchmarks/  --benchmark-only --benchmark-json=benchmarks/results/cpu.json
    python benchmarks/summarize.py benchmarks/results/cpu.json [--plot chart.png]

One group per configuration; peak CPU memory (bytes allocated during one call) and GFLOP/s are
in each entry's extra_info. Compare providers as ratios within one run: the fused entry's
extra_info also holds ort_over_fused, how many times faster the fused kernel is than ONNX Runtime
timed in alternation (measure.alternating_ratio), which a slow spell of the shared machine cannot
tilt the way it can tilt two medians taken one after the other.
"""
import time

import pytest
import torch
import torchvision

from mnv2_fused.bench.measure import alternating_ratio, peak_cpu_bytes
from mnv2_fused.bench.models import make_block, randomize, table2_blocks
from mnv2_fused.bench.providers import PROVIDERS

BATCHES = [1, 8]
BLOCKS = table2_blocks()


def block_flops(cin, cout, stride, t, res, batch):
    hidden, out_res = cin * t, (res - 1) // stride + 1
    expand = res * res * cin * hidden if t != 1 else 0
    return 2 * batch * (expand + out_res * out_res * hidden * (9 + cout))


# Alternating rounds, and runs per round by batch size, for the fused-vs-ONNX Runtime ratio.
ALTERNATING_ROUNDS = 12
ALTERNATING_RUNS = {1: 20, 8: 3}


def make_runner(provider, model, x):
    p = PROVIDERS[provider]
    reason = p.missing()
    if reason is not None:
        pytest.skip(reason)
    if provider == "fused":  # fed channels_last, which its kernels read in place
        x = x.contiguous(memory_format=torch.channels_last)
    return p.make(model, x)


def run_benchmark(benchmark, provider, model, x, flops):
    with torch.no_grad():
        fn = make_runner(provider, model, x)
        fn()
        held = getattr(fn, "held_bytes", None)  # a converted network's arena (peak_cpu_bytes)
        benchmark.extra_info["peak_bytes"] = peak_cpu_bytes(fn, held) if PROVIDERS[provider].measures_memory else None
        benchmark.extra_info["flops"] = flops
        # Idle thread pools spin for a while after their last job (torch's OpenMP workers, ONNX
        # Runtime's pool): let the previous provider's go quiet so they do not steal this one's cores.
        time.sleep(0.3)
        benchmark.pedantic(fn, rounds=15, iterations=1, warmup_rounds=2)
        if provider == "fused":
            if PROVIDERS["onnxruntime"].missing() is None:
                ort = make_runner("onnxruntime", model, x)
                ratio, _, _ = alternating_ratio(fn, ort, rounds=ALTERNATING_ROUNDS,
                                                repeat=ALTERNATING_RUNS.get(x.shape[0], 3))
                benchmark.extra_info["ort_over_fused"] = ratio
    benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9 if flops else None


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"b{i}_{c}-{o}_s{s}_t{t}_{r}px" for i, (c, o, s, t, r) in enumerate(BLOCKS)])
def test_block(benchmark, index, batch, provider):
    cin, cout, stride, t, res = BLOCKS[index]
    benchmark.group = f"block {index}: {cin}->{cout} s{stride} t{t} {res}x{res} batch {batch}"
    model = make_block(cin, cout, stride, t)
    x = torch.randn(batch, cin, res, res)
    run_benchmark(benchmark, provider, model, x, block_flops(cin, cout, stride, t, res, batch))


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("batch", BATCHES)
def test_mobilenet_v2(benchmark, batch, provider):
    benchmark.group = f"mobilenet_v2 224x224 batch {batch}"
    model = randomize(torchvision.models.mobilenet_v2(), seed=0).eval()
    x = torch.randn(batch, 3, 224, 224)
    run_benchmark(benchmark, provider, model, x, 2 * 300e6 * batch)


# EfficientNet-B0 and MobileNetV3-Large: every distinct block (by input shape and spec) and the whole
# converted networks. Variance-preserving random weights (conv_gain 1: SiLU / Hardswish networks).
FAMILY_NETS = ("efficientnet_b0", "mobilenet_v3_large")


def family_net(name):
    torch.manual_seed(0)
    return randomize(getattr(torchvision.models, name)(), seed=0, conv_gain=1.0).eval()


def family_blocks():
    """(net, index, block, input shape at 224x224, spec) for the distinct blocks of FAMILY_NETS."""
    from mnv2_fused.families import READERS, base_class_path, read_layers, spec_of

    found = []
    for name in FAMILY_NETS:
        net, shapes = family_net(name), {}

        def record(mod, inp, out):
            shapes[mod] = tuple(inp[0].shape[1:])  # returns None: the output stays

        hooks = [m.register_forward_hook(record) for m in net.modules() if base_class_path(m) in READERS]
        with torch.no_grad():
            net(torch.randn(1, 3, 224, 224))
        for h in hooks:
            h.remove()
        seen = set()
        for i, (block, shape) in enumerate(shapes.items()):
            spec = spec_of(read_layers(block))
            key = (shape, spec, block.block[-1][0].out_channels)
            if key not in seen:
                seen.add(key)
                found.append((name, i, block, shape, spec))
    return found


FAMILY_BLOCKS = family_blocks()


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("index", range(len(FAMILY_BLOCKS)),
                         ids=[f"{n}_b{i}" for n, i, _, _, _ in FAMILY_BLOCKS])
def test_family_block(benchmark, index, batch, provider):
    name, i, block, shape, spec = FAMILY_BLOCKS[index]
    cout = block.block[-1][0].out_channels
    benchmark.group = (f"{name} block {i}: {shape[0]}->{cout} k{spec.kernel_size} s{spec.stride} {spec.activation}"
                       f"{' SE' if spec.squeeze_excite else ''} {shape[1]}x{shape[2]} batch {batch}")
    run_benchmark(benchmark, provider, block, torch.randn(batch, *shape), None)


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", FAMILY_NETS)
def test_family_network(benchmark, name, batch, provider):
    benchmark.group = f"{name} 224x224 batch {batch}"
    run_benchmark(benchmark, provider, family_net(name), torch.randn(batch, 3, 224, 224), None)
