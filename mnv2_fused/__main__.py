"""Convert a torchvision MobileNetV2, check it, and compare speed and memory.

Builds torchvision's mobilenet_v2 (random weights with randomized BN statistics, or --weights),
converts a copy with mnv2_fused.convert, checks the outputs agree, then prints latency and peak
CPU memory of the original, the fused model and ONNX Runtime side by side.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Optional

import torch

# The rows of the table, in order (names in mnv2_fused.bench.providers).
TABLE = ("eager_nchw", "fused", "onnxruntime")


def _progress(step: int, total: int, label: str) -> None:
    print(f"[{step}/{total}] {label}", file=sys.stderr, flush=True)


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "mnv2-fused" if name.startswith("mnv2-fused") else "python -m mnv2_fused"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=_prog(), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--resolution", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--weights", default=None, help="a torchvision mobilenet_v2 state_dict file to load")
    p.add_argument("--channels-last", action="store_true", help="feed channels_last input")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--no-onnx", action="store_true", help="leave ONNX Runtime out")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="save a latency/memory bar chart (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    if args.batch < 1 or args.resolution < 1 or args.repeat < 1:
        p.error("--batch, --resolution and --repeat must be positive")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be positive")
    missing = _missing_dependencies(args)
    if missing:
        p.error(missing)
    return args


def _missing_dependencies(args: argparse.Namespace) -> Optional[str]:
    """What the options ask for that is not installed, checked before any work is done."""
    needs = [("torchvision", "the job's model")] + ([("matplotlib", "--plot")] if args.plot else [])
    absent = []
    for package, why in needs:
        try:
            importlib.import_module(package)
        except ImportError:
            absent.append(f"{package} (for {why})")
    if absent:
        return f"not installed: {', '.join(absent)}; pip install 'mnv2_fused[bench]'"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    import torchvision

    from .bench.measure import median_ms, peak_cpu_bytes, rel_err
    from .bench.models import randomize
    from .bench.providers import PROVIDERS

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    rows = [PROVIDERS[name] for name in TABLE if not (name == "onnxruntime" and args.no_onnx)]
    steps = 2 + len(rows)
    _progress(1, steps, "building models")
    original = torchvision.models.mobilenet_v2().eval()
    if args.weights:
        original.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    else:
        randomize(original, seed=0, conv_weights=False)  # torchvision's own initialisation, BN randomized
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    results, err = {}, float("nan")
    with torch.no_grad():
        ref = original(x)
        for i, provider in enumerate(rows):
            _progress(2 + i, steps, f"timing {provider.label}")
            reason = provider.missing()
            if reason is not None:
                results[provider.label] = {"ms": None, "peak_bytes": None, "missing": reason}
                continue
            run = provider.make(original, x)
            out = run()
            if provider.name == "fused":
                err = rel_err(out, ref)
            ms = median_ms(run, repeat=args.repeat)
            peak = peak_cpu_bytes(run, getattr(run, "held_bytes", None)) if provider.measures_memory else None
            results[provider.label] = {"ms": ms, "peak_bytes": peak}
    _progress(steps, steps, "done")

    summary = {"batch": args.batch, "resolution": args.resolution, "threads": threads,
               "relative_error": err, "results": results}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_table(summary))
    if args.plot:
        from .bench.plot import bar_chart

        bar_chart({k: r for k, r in results.items() if r["ms"] is not None}, args.plot,
                  title=f"mobilenet_v2 batch {args.batch} {args.resolution}px, {threads} threads")
    return 0 if err <= 1e-4 else 1


def _table(summary: dict) -> str:
    res, results = summary["resolution"], summary["results"]
    err = summary["relative_error"]
    lines = [f"mobilenet_v2, batch {summary['batch']}, {res}x{res}, {summary['threads']} threads",
             f"fused vs torchvision: relative error {err:.2e} ({'OK' if err <= 1e-4 else 'MISMATCH'})",
             f"{'model':<20}{'latency ms':>12}{'speed-up':>10}{'peak MiB':>10}"]
    base = results["torchvision eager"]["ms"]
    for name, r in results.items():
        if r["ms"] is None:
            lines.append(f"{name:<20}  not run: {r['missing']}")
            continue
        mem = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.2f}"
        lines.append(f"{name:<20}{r['ms']:>12.2f}{base / r['ms']:>9.2f}x{mem:>10}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
