"""GPU timing of the Table-2 blocks at batch 64, fp16, channels_last: fused CUDA, fused Triton,
torchvision eager (cuDNN) and torch.compile, with peak memory and each block's roofline.

    python benchmarks/gpu_blocks.py [--batch 64] [--jsonl rows.jsonl] [--no-compile]

Roofline per block: the fewest bytes a fused block must move (input and output once, the weights
once, fp16) over the H200's 4.8 TB/s, and its multiply-adds (x2 FLOPs) over 989 dense fp16
TFLOP/s; the larger of the two is the floor, and "of roofline" is floor / measured time. Each
row is appended to the JSON-lines file as soon as it is measured; the table comes last.
"""
import argparse
import copy
import json
import math

import torch

from mnv2_fused import FusedInvertedResidual
from mnv2_fused.bench.measure import rel_err
from mnv2_fused.bench.models import make_block, table2_blocks

HBM_BYTES_PER_S = 4.8e12
FP16_FLOP_PER_S = 989e12
PROVIDERS = ("eager", "compile", "cuda", "triton")


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


def block_costs(cin, cout, stride, t, res, batch, elem=2):
    """(bytes, flops) a fused block cannot go below."""
    hidden, out = cin * t, (res - 1) // stride + 1
    macs = batch * ((res * res * cin * hidden if t != 1 else 0) + out * out * hidden * (9 + cout))
    weights = (cin * hidden if t != 1 else 0) + hidden * 9 + hidden * cout + 2 * hidden + cout
    moved = (batch * (cin * res * res + cout * out * out) + weights) * elem
    return moved, 2 * macs


def measure_block(index, cin, cout, stride, t, res, batch, providers):
    dtype = torch.float16
    block = make_block(cin, cout, stride, t).cuda().to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(batch, cin, res, res, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    moved, flops = block_costs(cin, cout, stride, t, res, batch)
    floor_ms = max(moved / HBM_BYTES_PER_S, flops / FP16_FLOP_PER_S) * 1e3
    row = {"block": f"{index}: {cin}->{cout} s{stride} t{t} {res}px", "bytes": moved, "flops": flops,
           "roofline_ms": floor_ms}
    with torch.no_grad():
        ref = block(x)
        for name in providers:
            try:
                if name == "eager":
                    m = block
                elif name == "compile":
                    torch._dynamo.reset()  # cold caches per block: no recompile limits hit across blocks
                    m = torch.compile(copy.deepcopy(block))
                else:
                    m = FusedInvertedResidual.from_block(copy.deepcopy(block), backend=name).eval()
                out = m(x)
                row[f"{name}_err"] = rel_err(out.float(), ref.float())
                row[f"{name}_ms"] = time_ms(lambda: m(x))
                row[f"{name}_peak"] = peak_bytes(lambda: m(x))
                row[f"{name}_of_roofline"] = floor_ms / row[f"{name}_ms"]
            except Exception as e:  # keep measuring the others; the table shows the failure
                row[f"{name}_error"] = repr(e)[:300]
    return row


def emit(row, jsonl=None):
    """Prints the row as JSON (NaN as null) and appends it to the JSON-lines file ``jsonl``, as soon
    as it is measured: a run cut off by its time limit keeps the rows it finished. Returns it."""
    print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}), flush=True)
    if jsonl:
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def table(rows, batch):
    nan = float("nan")
    lines = [f"batch {batch}, fp16, channels_last; median ms (do_bench); roof = roofline floor / time",
             f"{'block':<28}{'floor':>7}{'eager':>8}{'compile':>8}{'cuda':>8}{'triton':>8}"
             f"{'cuda roof':>10}{'cuda/eager':>11}{'cuda MiB':>9}{'eager MiB':>10}"]
    for r in rows:
        ms = {p: r.get(f"{p}_ms", nan) for p in PROVIDERS}
        lines.append(f"{r['block']:<28}{r['roofline_ms']:>7.3f}" + "".join(f"{ms[p]:>8.3f}" for p in PROVIDERS)
                     + f"{r.get('cuda_of_roofline', nan):>9.1%} {ms['eager'] / ms['cuda']:>9.2f}x"
                     + f"{r.get('cuda_peak', nan) / 2**20:>9.1f}{r.get('eager_peak', nan) / 2**20:>10.1f}")
        errors = [f"{p}: {r[p + '_error']}" for p in PROVIDERS if p + "_error" in r]
        lines += [f"    {e}" for e in errors]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--jsonl", default=None, help="append each row to this JSON-lines file as it is measured")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    providers = [q for q in PROVIDERS if not (q == "compile" and args.no_compile)]
    rows = []
    for i, (cin, cout, stride, t, res) in enumerate(table2_blocks()):
        rows.append(emit(measure_block(i, cin, cout, stride, t, res, args.batch, providers), args.jsonl))
    print()
    print(table(rows, args.batch))


if __name__ == "__main__":
    main()
