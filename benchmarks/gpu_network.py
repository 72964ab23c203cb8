"""GPU timing of whole networks: each model converted with mnv2_fused (its blocks on the CUDA or
Triton kernel, the rest PyTorch's) against the same torchvision model in eager PyTorch (cuDNN),
fp16, channels_last, with peak memory and the output's error against the fp32 model.

    python benchmarks/gpu_network.py [--batches 1 64] [--models mobilenet_v2 efficientnet_b0] [--jsonl F]

The CUDA kernel covers MobileNetV2's block only, so the other models' "cuda" column is absent.
"""
import argparse
import copy

import torch
import torchvision
from gpu_blocks import emit, peak_bytes, time_ms

import mnv2_fused
from mnv2_fused.bench.measure import rel_err
from mnv2_fused.bench.models import randomize

MODELS = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "mnasnet1_0")
PROVIDERS = ("eager", "cuda", "triton")


def measure_model(name, batch):
    dtype, fmt = torch.float16, torch.channels_last
    torch.manual_seed(0)
    # conv_gain 1 keeps SiLU / Hardswish networks' activations in fp16's range (randomize's docstring)
    net = randomize(getattr(torchvision.models, name)(), seed=1, conv_gain=1.0).eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    row = {"model": name, "batch": batch}
    with torch.no_grad():
        ref = net.cuda()(x.cuda()).float()
        xh = x.to("cuda", dtype).contiguous(memory_format=fmt)
        for provider in PROVIDERS:
            if provider == "cuda" and name != "mobilenet_v2":
                continue
            try:
                m = copy.deepcopy(net).cpu()
                if provider != "eager":  # converted on the CPU, then moved, as users do
                    m = mnv2_fused.convert(m, provider)
                m = m.to("cuda", dtype).to(memory_format=fmt)
                row[f"{provider}_err"] = rel_err(m(xh).float(), ref)
                row[f"{provider}_ms"] = time_ms(lambda: m(xh))
                row[f"{provider}_peak"] = peak_bytes(lambda: m(xh))
            except Exception as e:  # keep measuring the others; the table shows the failure
                row[f"{provider}_error"] = repr(e)[:300]
    return row


def table(rows):
    nan = float("nan")
    lines = ["fp16, channels_last, 224x224; median ms (do_bench); err: relative to the fp32 model",
             f"{'model':<20}{'batch':>6}{'eager':>8}{'cuda':>8}{'triton':>8}{'eager/cuda':>11}{'eager/triton':>13}"
             f"{'eager MiB':>10}{'fused MiB':>10}{'err eager':>10}{'err fused':>10}"]
    for r in rows:
        ms = {p: r.get(f"{p}_ms", nan) for p in PROVIDERS}
        fused = "cuda" if "cuda_ms" in r else "triton"
        lines.append(f"{r['model']:<20}{r['batch']:>6}" + "".join(f"{ms[p]:>8.3f}" for p in PROVIDERS)
                     + f"{ms['eager'] / ms['cuda']:>10.2f}x{ms['eager'] / ms['triton']:>12.2f}x"
                     + f"{r.get('eager_peak', nan) / 2**20:>10.1f}{r.get(fused + '_peak', nan) / 2**20:>10.1f}"
                     + f"{r.get('eager_err', nan):>10.1e}{r.get(fused + '_err', nan):>10.1e}")
        lines += [f"    {p}: {r[p + '_error']}" for p in PROVIDERS if p + "_error" in r]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--jsonl", default=None, help="append each row to this JSON-lines file as it is measured")
    args = p.parse_args()
    torch.backends.cudnn.allow_tf32 = False  # the fp32 reference in fp32, not TF32
    rows = []
    for name in args.models:
        for batch in args.batches:
            rows.append(emit(measure_model(name, batch), args.jsonl))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
