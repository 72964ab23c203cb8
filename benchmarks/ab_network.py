"""Whole mobilenet_v2: fused vs ONNX Runtime in alternating blocks of runs, one process.

    python benchmarks/ab_network.py [--batch 1 8] [--rounds 12] [--runs 20]

The pytest-benchmark run also records this ratio for every configuration (extra_info); this
script repeats it for the whole network alone, with more rounds (see measure.alternating_ratio).
"""
import argparse
import copy
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from helpers import randomize_bn  # noqa: E402

import mnv2_fused  # noqa: E402
from mnv2_fused.measure import alternating_ratio  # noqa: E402
from mnv2_fused.onnx_runtime import ort_runner  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=12, help="alternations of the two providers")
    p.add_argument("--runs", type=int, default=20, help="timed runs per block (a quarter of it at batch > 1)")
    args = p.parse_args()
    net = randomize_bn(torchvision.models.mobilenet_v2(), seed=0).eval()
    fused = mnv2_fused.convert(copy.deepcopy(net))
    print(f"{torch.get_num_threads()} threads; medians over {args.rounds} alternating rounds")
    for batch in args.batch:
        x = torch.randn(batch, 3, 224, 224)
        ort = ort_runner(net, x, torch.get_num_threads())
        if ort is None:
            sys.exit("onnxruntime is not installed")
        runs = args.runs if batch == 1 else max(3, args.runs // 4)
        with torch.no_grad():
            ratio, f, o = alternating_ratio(lambda: fused(x), ort, rounds=args.rounds, repeat=runs)
        print(f"batch {batch}: fused {f * 1e3:.2f}  onnxruntime {o * 1e3:.2f}  ORT/fused {ratio:.2f}x")


if __name__ == "__main__":
    main()
