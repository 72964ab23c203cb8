"""GPU timing of the Table-2 blocks at batch 64, fp16, channels_last: fused CUDA, fused Triton,
torchvision eager (cuDNN) and torch.compile, with peak memory; prints a table last.

    python benchmarks/gpu_blocks.py [--batch 64] [--json out.json]
"""
import argparse
import copy
import json

import torch

from mnv2_fused import FusedInvertedResidual
from mnv2_fused.bench.measure import rel_err
from mnv2_fused.bench.models import make_block, table2_blocks


def time_ms(fn):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def peak_bytes(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json", default=None)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    dtype = torch.float16
    rows = []
    for i, (cin, cout, stride, t, res) in enumerate(table2_blocks()):
        block = make_block(cin, cout, stride, t).cuda().to(dtype).to(memory_format=torch.channels_last)
        x = torch.randn(args.batch, cin, res, res, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
        providers = {"eager": block}
        for backend in ("cuda", "triton"):
            providers[backend] = FusedInvertedResidual.from_block(copy.deepcopy(block), backend=backend).eval()
        if not args.no_compile:
            providers["compile"] = torch.compile(copy.deepcopy(block))
        row = {"block": f"{i}: {cin}->{cout} s{stride} t{t} {res}px"}
        with torch.no_grad():
            ref = block(x)
            for name, m in providers.items():
                try:
                    out = m(x)
                    row[f"{name}_err"] = rel_err(out.float(), ref.float())
                    row[f"{name}_ms"] = time_ms(lambda: m(x))
                    row[f"{name}_peak"] = peak_bytes(lambda: m(x))
                except Exception as e:  # keep timing the others; the table shows the failure
                    row[f"{name}_ms"] = float("nan")
                    row[f"{name}_error"] = repr(e)[:200]
        io_bytes = (x.numel() + ref.numel()) * x.element_size() + sum(p.numel() * 2 for p in block.parameters())
        row["io_bytes"] = io_bytes
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)
    print(f"\nbatch {args.batch}, fp16, channels_last; median ms (do_bench); speed-up = eager / fused")
    print(f"{'block':<30}{'eager':>8}{'compile':>9}{'cuda':>8}{'triton':>8}{'cuda x':>8}{'triton x':>9}{'cuda MiB':>9}{'io MiB':>8}")
    for r in rows:
        e = r.get("eager_ms", float("nan"))
        print(f"{r['block']:<30}{e:>8.3f}{r.get('compile_ms', float('nan')):>9.3f}{r.get('cuda_ms', float('nan')):>8.3f}"
              f"{r.get('triton_ms', float('nan')):>8.3f}{e / r.get('cuda_ms', float('nan')):>7.2f}x"
              f"{e / r.get('triton_ms', float('nan')):>8.2f}x{r.get('cuda_peak', float('nan')) / 2**20:>9.1f}"
              f"{r['io_bytes'] / 2**20:>8.1f}")


if __name__ == "__main__":
    main()
