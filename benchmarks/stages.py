"""Where a converted mobilenet_v2's forward spends its time, stage by stage.

    python benchmarks/stages.py [--batch 1] [--rounds 40] [--peak-gflops 228 | --fma-peak /tmp/fma_peak]

Each stage (the stem with the first block, the 16 blocks, the head with its pool, the classifier)
is timed in every round: hot, called twice in a row on its own input as an op of its own, so that
its weights, input and output are in the caches; in a chain, the stages called one after another
as ops of their own, each finding its weights and input where the stages before it left them; and
in the forward, each stage's own scope inside the network's one call (what a forward spends on it:
an op of its own also pays for entering the library and waking the threads). The whole forward is
timed in the same rounds, and so is the check of the weights' version counters that a forward
makes before it enters the library (right after a forward, which left them out of the caches),
and the page faults a whole forward takes. Medians over rounds; GFLOP/s of the time in the
forward, from the torchvision stage's convolutions and linear layer, and its share of the
machine's FMA ceiling: --peak-gflops, or measured in every round by running --fma-peak
(benchmarks/fma_peak.cpp compiled), since on a shared machine the ceiling moves with the
machine's spells. In the forward, each stage's team work too (csrc/cpu/team.h): the jobs it hands
its threads, how long the leading thread waited in them for the other threads' chunks, and how
much of the stage ran outside any job (the leader's own serial work, while the other threads wait
for the next job); then the whole forward's time outside its stages (entering the library from
Python, checking the weights' versions, starting and ending the team).
"""
import argparse
import os
import re
import resource
import statistics
import subprocess
import time

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnv2_fused import convert
from mnv2_fused.bench.measure import scope_times
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


# The prefix of the network op's stage scopes (csrc/cpu/network.cpp); the stage's name follows.
SCOPE = "mnv2_fused.mobilenet_v2_forward: "


def fma_ceiling(binary: str, threads: int) -> float:
    """GFLOP/s that benchmarks/fma_peak.cpp, compiled to `binary`, reaches on `threads` threads."""
    out = subprocess.run([binary, str(threads), "50000000"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"([\d.]+) GFLOP/s", out)
    if found is None:
        raise RuntimeError(f"{binary} printed no GFLOP/s: {out!r}")
    return float(found.group(1))


def timed(f, a) -> float:
    t0 = time.perf_counter()
    f(a)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=40)
    ceiling = p.add_mutually_exclusive_group()
    ceiling.add_argument("--peak-gflops", type=float, default=None, help="the FMA ceiling, for a share-of-peak column")
    ceiling.add_argument("--fma-peak", metavar="BINARY", default=None,
                         help="benchmarks/fma_peak.cpp compiled: measures the FMA ceiling in every round")
    args = p.parse_args()
    if args.batch < 1 or args.rounds < 1:
        p.error("--batch and --rounds must be positive")
    if args.peak_gflops is not None and args.peak_gflops <= 0:
        p.error("--peak-gflops must be positive")
    if args.fma_peak is not None and not os.access(args.fma_peak, os.X_OK):
        p.error(f"--fma-peak: {args.fma_peak} is not an executable "
                "(compile benchmarks/fma_peak.cpp as its header says)")
    ref = randomize(torchvision.models.mobilenet_v2(), seed=0).eval()
    net = convert(randomize(torchvision.models.mobilenet_v2(), seed=0).eval())
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    calls = stage_calls(_fold_network(net.features, net.classifier))
    flops = stage_flops(ref, x.contiguous())
    hot, chain, scoped = [[] for _ in calls], [[] for _ in calls], [[] for _ in calls]
    jobs, waiting, outside = [[] for _ in calls], [[] for _ in calls], [[] for _ in calls]
    whole, scoped_whole, peaks, checks, faults = [], [], [], [], []
    with torch.no_grad():
        net(x)  # binds the forward's call, with the snapshot of the weights' version counters
        versions = net._bound._versions
        inputs, t = [], x
        for _, f in calls:
            inputs.append(t)
            t = f(t)
        for r in range(args.rounds):
            if r % 10 == 0:
                print(f"round {r + 1} of {args.rounds}", flush=True)
            if args.fma_peak:
                peaks.append(fma_ceiling(args.fma_peak, torch.get_num_threads()))
            t = x
            for i, (_, f) in enumerate(calls):
                t0 = time.perf_counter()
                t = f(t)
                chain[i].append(time.perf_counter() - t0)
            for i, (_, f) in enumerate(calls):
                f(inputs[i])
                hot[i].append(timed(f, inputs[i]))
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            whole.append(timed(net, x))
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
            # What every bound forward does first, timed right after a forward as it runs then.
            checks.append(timed(lambda _: versions.unchanged(), None))
            with scope_times(SCOPE) as times:
                scoped_whole.append(timed(net, x))
            names = [name.removeprefix(SCOPE) for name, *_ in times]
            if names != [name for name, _ in calls]:
                raise RuntimeError(f"the forward's stage scopes were {names}, not the stages timed here")
            for i, (_, seconds, n_jobs, waited, serial) in enumerate(times):
                scoped[i].append(seconds)
                jobs[i].append(n_jobs)
                waiting[i].append(waited)
                outside[i].append(serial)
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, medians of {args.rounds} rounds")
    peak = statistics.median(peaks) if peaks else args.peak_gflops
    if peaks:
        print(f"FMA ceiling {peak:.0f} GFLOP/s (fma_peak in every round: {min(peaks):.0f}-{max(peaks):.0f})")
    print(f"{'':<14}{'':>9}{'':>10}{'':>12}{'':>9}{'':>9}{'team jobs in the forward':>31}")
    print(f"{'stage':<14}{'hot us':>9}{'chain us':>10}{'forward us':>12}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'jobs':>6}{'waiting us':>12}{'outside us':>12}")
    for (name, _), h, c, f, fl, nj, wt, ou in zip(calls, hot, chain, scoped, flops, jobs, waiting, outside):
        h, c, f = statistics.median(h), statistics.median(c), statistics.median(f)
        share = f"{fl / f / 1e9 / peak:>9.0%}" if peak else f"{'-':>9}"
        print(f"{name:<14}{h * 1e6:>9.1f}{c * 1e6:>10.1f}{f * 1e6:>12.1f}{fl / f / 1e9:>9.1f}{share}"
              f"{statistics.median(nj):>6.0f}{statistics.median(wt) * 1e6:>12.1f}{statistics.median(ou) * 1e6:>12.1f}")
    sums = [sum(statistics.median(t) for t in ts) * 1e3 for ts in (hot, chain, scoped)]
    fwd = statistics.median(whole)
    gflops = sum(flops) / fwd / 1e9
    share = f", {gflops / peak:.0%} of the ceiling" if peak else ""
    print(f"stages hot {sums[0]:.3f} ms, in a chain {sums[1]:.3f} ms, in the forward {sums[2]:.3f} ms (of its "
          f"{statistics.median(scoped_whole) * 1e3:.3f} ms); whole forward {fwd * 1e3:.3f} ms "
          f"({gflops:.1f} GFLOP/s{share})")
    # Per round, so that the parts add up within one forward.
    waits = statistics.median(sum(w[r] for w in waiting) for r in range(args.rounds))
    serial = statistics.median(sum(o[r] for o in outside) for r in range(args.rounds))
    between = statistics.median(scoped_whole[r] - sum(s[r] for s in scoped) for r in range(args.rounds))
    print(f"the team in the forward: waiting {waits * 1e6:.1f} us, the stages outside their jobs "
          f"{serial * 1e6:.1f} us, the forward outside its stages {between * 1e6:.1f} us")
    print(f"checking the weights' version counters right after a forward: {statistics.median(checks) * 1e6:.1f} us")
    # Memory the allocator gave back to the system after the last forward and this one touches
    # afresh (README, How the CPU kernel works: the stem's two speeds).
    print(f"page faults in a forward: {statistics.median(faults):.0f}")


if __name__ == "__main__":
    main()
