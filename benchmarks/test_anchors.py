"""The whole converted MobileNetV2 against the other CPU runtimes, and under load.

    pip install --no-build-isolation -e ".[bench,anchors]"
    python -m pytest benchmarks/test_anchors.py --benchmark-only --benchmark-json=benchmarks/results/anchors.json
    python benchmarks/summarize.py benchmarks/results/anchors.json --anchors

Anchors (ONNX Runtime; OpenVINO, TFLite with XNNPACK, ExecuTorch with XNNPACK from the `anchors`
extra, each skipped with the reason when absent): each output is checked against PyTorch's before
timing; each entry records how many times faster the fused network is, timed in alternation with
it (``fused_speedup``, the median of the rounds' ratios).

Contention: the same network with another process spinning on one of the cores, in alternating
quiet and loaded rounds; ``slowdown`` is the median loaded / quiet ratio (2.0 would be the ideal
on 2 cores: half the machine).
"""
import statistics
import subprocess
import sys
import time

import pytest
import torch
import torchvision

from mnv2_fused.bench.measure import alternating_ratio, run_times
from mnv2_fused.bench.models import randomize
from mnv2_fused.bench.providers import ANCHORS, PROVIDERS

BATCHES = [1, 8]
RUNS = {1: 20, 8: 4}
ANCHOR_PROVIDERS = {"onnxruntime": PROVIDERS["onnxruntime"], **ANCHORS}


def network():
    torch.manual_seed(0)
    return randomize(torchvision.models.mobilenet_v2(), seed=0).eval()


def runner(provider, model, x):
    reason = provider.missing()
    if reason is not None:
        pytest.skip(reason)
    if provider.name == "fused":
        x = x.contiguous(memory_format=torch.channels_last)
    return provider.make(model, x)


@pytest.mark.parametrize("name", list(ANCHOR_PROVIDERS))
@pytest.mark.parametrize("batch", BATCHES)
def test_anchor(benchmark, name, batch):
    benchmark.group = f"mobilenet_v2 anchors batch {batch}"
    model, x = network(), torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        other = runner(ANCHOR_PROVIDERS[name], model, x)
        fused = runner(PROVIDERS["fused"], model, x)
        ratio, mine, theirs = alternating_ratio(fused, other, rounds=8, repeat=RUNS[batch])
        benchmark.extra_info.update(fused_speedup=ratio, fused_ms=mine * 1e3, anchor_ms=theirs * 1e3)
        time.sleep(0.3)
        benchmark.pedantic(other, rounds=15, iterations=1, warmup_rounds=2)


def loaded_over_quiet(fn, rounds: int, repeat: int, pause: float = 0.2) -> tuple:
    """Median over rounds of (median time with a spinning process) / (median time without), and
    the two medians."""
    ratios, quiet, loaded = [], [], []
    for _ in range(rounds):
        time.sleep(pause)
        q = statistics.median(run_times(fn, warmup=2, repeat=repeat))
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(pause)  # the spinner is running before the timing starts
            busy = statistics.median(run_times(fn, warmup=2, repeat=repeat))
        finally:
            spinner.kill()
            spinner.wait()
        ratios.append(busy / q)
        quiet.append(q)
        loaded.append(busy)
    return statistics.median(ratios), statistics.median(quiet), statistics.median(loaded)


@pytest.mark.parametrize("name", ["fused", "onnxruntime"])
@pytest.mark.parametrize("batch", BATCHES)
def test_contention(benchmark, name, batch):
    benchmark.group = f"mobilenet_v2 under load batch {batch}"
    model, x = network(), torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        fn = runner(PROVIDERS[name], model, x)
        slowdown, quiet, loaded = loaded_over_quiet(fn, rounds=6, repeat=RUNS[batch])
        benchmark.extra_info.update(slowdown=slowdown, quiet_ms=quiet * 1e3, loaded_ms=loaded * 1e3)
        benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
