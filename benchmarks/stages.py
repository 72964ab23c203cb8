"""Where a converted mobilenet_v2's forward spends its time, stage by stage.

    python benchmarks/stages.py [--batch 1] [--rounds 40] [--peak-gflops 228]

Each stage (the stem with the first block, the 16 blocks, the head with its pool, the classifier)
is timed two ways in every round: hot, called twice in a row on its own input so that its weights,
input and output are in the caches; and in a chain, the stages one after another as a forward runs
them, where each finds its weights and input where the stages before it left them. The whole
forward is timed in the same rounds. Medians over rounds; GFLOP/s from the torchvision stage's
convolutions and linear layer, and the share of --peak-gflops (the machine's FMA ceiling,
benchmarks/fma_peak.cpp) when given.
"""
import argparse
import statistics
import time

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnv2_fused import convert
from mnv2_fused.bench.models import randomize
from mnv2_fused.network import NetworkWeights, _fold_network
from mnv2_fused.ops import head_pool, linear, run_block, stem_block


def stage_calls(w: NetworkWeights) -> list:
    """(name, f) for each stage the network op runs, f taking the stage's input (the CPU kernels)."""
    calls = [("stem+block 0", lambda t: stem_block(t, w.stem, w.stem_stride, w.stride, use_kernel=True))]
    for i, (fw, stride, res) in enumerate(w.blocks):
        calls.append((f"block {i + 1}", lambda t, fw=fw, stride=stride, res=res: run_block(t, fw, stride, res, "cpu")))
    calls.append(("head+pool", lambda t: head_pool(t, *w.head, use_kernel=True)))
    if w.classifier is not None:
        calls.append(("classifier", lambda t: linear(t, *w.classifier, use_kernel=True)))
    return calls


def stage_flops(ref: torchvision.models.MobileNetV2, x: torch.Tensor) -> list:
    """FLOPs of the torchvision modules behind each fused stage (2 per multiply-add)."""
    f = list(ref.features)
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]  # the head's pool (no FLOPs counted): the classifier's input
    groups = [f[:2]] + [[m] for m in f[2:-1]] + [f[-1:] + pool, [ref.classifier]]
    flops = []
    with torch.no_grad():
        for mods in groups:
            with FlopCounterMode(display=False) as counter:
                for m in mods:
                    x = m(x)
            flops.append(counter.get_total_flops())
    return flops


def timed(f, a) -> float:
    t0 = time.perf_counter()
    f(a)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--peak-gflops", type=float, default=None, help="the FMA ceiling, for a share-of-peak column")
    args = p.parse_args()
    if args.batch < 1 or args.rounds < 1:
        p.error("--batch and --rounds must be positive")
    if args.peak_gflops is not None and args.peak_gflops <= 0:
        p.error("--peak-gflops must be positive")
    ref = randomize(torchvision.models.mobilenet_v2(), seed=0).eval()
    net = convert(randomize(torchvision.models.mobilenet_v2(), seed=0).eval())
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    calls = stage_calls(_fold_network(net.features, net.classifier))
    flops = stage_flops(ref, x.contiguous())
    hot, chain, whole = [[] for _ in calls], [[] for _ in calls], []
    with torch.no_grad():
        inputs, t = [], x
        for _, f in calls:
            inputs.append(t)
            t = f(t)
        for r in range(args.rounds):
            if r % 10 == 0:
                print(f"round {r + 1} of {args.rounds}", flush=True)
            t = x
            for i, (_, f) in enumerate(calls):
                t0 = time.perf_counter()
                t = f(t)
                chain[i].append(time.perf_counter() - t0)
            for i, (_, f) in enumerate(calls):
                f(inputs[i])
                hot[i].append(timed(f, inputs[i]))
            whole.append(timed(net, x))
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, medians of {args.rounds} rounds")
    peak = args.peak_gflops
    print(f"{'stage':<14}{'hot us':>9}{'GFLOP/s':>9}{'of peak':>9}{'chain us':>10}{'chain/hot':>10}")
    for (name, _), h, c, fl in zip(calls, hot, chain, flops):
        h, c = statistics.median(h), statistics.median(c)
        share = f"{fl / h / 1e9 / peak:>9.0%}" if peak else f"{'-':>9}"
        print(f"{name:<14}{h * 1e6:>9.1f}{fl / h / 1e9:>9.1f}{share}{c * 1e6:>10.1f}{c / h:>10.2f}")
    sum_hot = sum(statistics.median(h) for h in hot)
    sum_chain = sum(statistics.median(c) for c in chain)
    fwd = statistics.median(whole)
    print(f"stages hot {sum_hot * 1e3:.3f} ms, in a chain {sum_chain * 1e3:.3f} ms, whole forward {fwd * 1e3:.3f} ms "
          f"({sum(flops) / fwd / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
