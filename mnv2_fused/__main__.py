"""python -m mnv2_fused: convert a torchvision MobileNetV2, check it, and compare speed and memory.

Builds torchvision's mobilenet_v2 (random weights with randomized BN statistics, or --weights),
converts a copy with mnv2_fused.convert, checks the outputs agree, then prints latency and peak
CPU memory of the original, the fused model and ONNX Runtime (when installed) side by side.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys

import torch


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)


def _progress(step: int, total: int, label: str) -> None:
    print(f"[{step}/{total}] {label}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mnv2_fused", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--resolution", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--weights", default=None, help="a torchvision mobilenet_v2 state_dict file to load")
    p.add_argument("--channels-last", action="store_true", help="feed channels_last input")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime even when installed")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="save a latency/memory bar chart")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    if args.batch < 1 or args.resolution < 1 or args.repeat < 1:
        p.error("--batch, --resolution and --repeat must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torchvision
    except ImportError:
        print("python -m mnv2_fused needs torchvision: pip install torchvision", file=sys.stderr)
        return 2
    from . import convert
    from .measure import median_ms, peak_cpu_bytes
    from .onnx_runtime import ort_runner

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    steps = 4 if args.no_onnx else 5
    _progress(1, steps, "building models")
    original = torchvision.models.mobilenet_v2().eval()
    if args.weights:
        original.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    else:
        _randomize(original, seed=0)
    fused = convert(copy.deepcopy(original))
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    _progress(2, steps, "checking outputs")
    with torch.no_grad():
        ref, out = original(x), fused(x)
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()

    results = {}
    with torch.no_grad():
        for i, (name, model) in enumerate([("torchvision eager", original), ("mnv2_fused", fused)]):
            _progress(3 + i, steps, f"timing {name}")
            run = lambda: model(x)  # noqa: E731
            results[name] = {"ms": median_ms(run, repeat=args.repeat), "peak_bytes": peak_cpu_bytes(run)}
        if not args.no_onnx:
            _progress(5, steps, "exporting and timing ONNX Runtime")
            runner = ort_runner(original, x, threads)
            if runner is not None:
                results["onnxruntime"] = {"ms": median_ms(runner, repeat=args.repeat), "peak_bytes": None}

    summary = {"batch": args.batch, "resolution": args.resolution, "threads": threads,
               "relative_error": err, "results": results}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"mobilenet_v2, batch {args.batch}, {args.resolution}x{args.resolution}, {threads} threads")
        print(f"fused vs torchvision: relative error {err:.2e} ({'OK' if err <= 1e-4 else 'MISMATCH'})")
        base = results["torchvision eager"]["ms"]
        print(f"{'model':<20}{'latency ms':>12}{'speed-up':>10}{'peak MiB':>10}")
        for name, r in results.items():
            mem = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.2f}"
            print(f"{name:<20}{r['ms']:>12.2f}{base / r['ms']:>9.2f}x{mem:>10}")
    if args.plot:
        from .plot import bar_chart

        bar_chart(results, args.plot, title=f"mobilenet_v2 batch {args.batch} {args.resolution}px, {threads} threads")
    return 0 if err <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
