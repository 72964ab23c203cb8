"""Whole mobilenet_v2: fused vs ONNX Runtime in alternating blocks of runs, one process.

    python benchmarks/ab_network.py [--batch 1 8] [--rounds 12] [--runs 20]

The pytest-benchmark run also records this ratio for every configuration (extra_info); this
script repeats it for the whole network alone, with more rounds (see measure.alternating_ratio).
"""
import argparse
import sys

import torch
import torchvision

from mnv2_fused.bench.measure import alternating_ratio
from mnv2_fused.bench.models import randomize
from mnv2_fused.bench.providers import PROVIDERS


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=12, help="alternations of the two providers")
    p.add_argument("--runs", type=int, default=20, help="timed runs per block (a quarter of it at batch > 1)")
    args = p.parse_args()
    net = randomize(torchvision.models.mobilenet_v2(), seed=0).eval()
    missing = PROVIDERS["onnxruntime"].missing()
    if missing:
        sys.exit(missing)
    print(f"{torch.get_num_threads()} threads; medians over {args.rounds} alternating rounds")
    for batch in args.batch:
        x = torch.randn(batch, 3, 224, 224)
        fused, ort = PROVIDERS["fused"].make(net, x), PROVIDERS["onnxruntime"].make(net, x)
        runs = args.runs if batch == 1 else max(3, args.runs // 4)
        with torch.no_grad():
            ratio, f, o = alternating_ratio(fused, ort, rounds=args.rounds, repeat=runs)
        print(f"batch {batch}: fused {f * 1e3:.2f}  onnxruntime {o * 1e3:.2f}  ORT/fused {ratio:.2f}x")


if __name__ == "__main__":
    main()
