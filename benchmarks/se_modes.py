"""The squeeze-and-excite's second pass, both ways: EfficientNet-B0's blocks at batch 1 with the
kept depthwise output projected (keep) and with the block run again (recompute), each way in a
process of its own (MNV2_FUSED_SE is read once), and the kept output's size per image.

    python benchmarks/se_modes.py [--batch 1] [--runs 50]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def measure(batch: int, runs: int) -> dict:
    """Median ms of every fused block of EfficientNet-B0 at 224x224 (in this process's mode)."""
    import torchvision

    from mnv2_fused import convert
    from mnv2_fused.bench.models import randomize
    from mnv2_fused.families import READERS, base_class_path, read_layers

    torch.manual_seed(0)
    net = randomize(torchvision.models.efficientnet_b0(), seed=0, conv_gain=1.0).eval()
    inputs = {}

    def record(module, inp, out):
        inputs[module] = inp[0].shape[1:]

    hooks = [m.register_forward_hook(record) for m in net.modules() if base_class_path(m) in READERS]
    with torch.no_grad():
        net(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    convert(net)
    times = {}
    with torch.no_grad():
        for i, (block, shape) in enumerate(inputs.items()):
            x = torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last)
            for _ in range(5):
                block(x)
            t = []
            for _ in range(runs):
                t0 = time.perf_counter()
                block(x)
                t.append(time.perf_counter() - t0)
            hidden = read_layers(block).depthwise[0].in_channels
            out = block(x)
            times[i] = {"ms": statistics.median(t) * 1e3, "shape": list(shape),
                        "kept_mib": out.shape[2] * out.shape[3] * hidden * 4 / 2**20}
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.batch, args.runs)))
        return
    results = {}
    for mode in ("keep", "recompute"):
        run = subprocess.run([sys.executable, __file__, "--child", "--batch", str(args.batch), "--runs",
                              str(args.runs)], env={**os.environ, "MNV2_FUSED_SE": mode}, capture_output=True,
                             text=True, check=True)
        results[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"EfficientNet-B0 blocks, batch {args.batch}; median ms; kept = the depthwise output per image")
    print(f"{'block':<8}{'input':<18}{'kept MiB':>9}{'keep':>8}{'recompute':>11}{'recompute/keep':>16}")
    total = {"keep": 0.0, "recompute": 0.0}
    for i in results["keep"]:
        k, r = results["keep"][i], results["recompute"][i]
        total["keep"] += k["ms"]
        total["recompute"] += r["ms"]
        print(f"{i:<8}{str(tuple(k['shape'])):<18}{k['kept_mib']:>9.2f}{k['ms']:>8.3f}{r['ms']:>11.3f}"
              f"{r['ms'] / k['ms']:>15.2f}x")
    print(f"{'all':<35}{total['keep']:>8.2f}{total['recompute']:>11.2f}{total['recompute'] / total['keep']:>15.2f}x")


if __name__ == "__main__":
    main()
