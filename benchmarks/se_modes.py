"""The squeeze-and-excite's second pass, both ways: EfficientNet-B0's blocks with the kept
depthwise output projected (keep) and with the block run again (recompute), timed alternating in
one process (MNV2_FUSED_SE is read at every call), with the kept output's size per image.

    python benchmarks/se_modes.py [--batch 1 8] [--rounds 8]
"""
import argparse
import os

import torch

from mnv2_fused.bench.measure import alternating_ratio


def blocks():
    """(index, block, input shape) of every fused block of EfficientNet-B0 at 224x224."""
    import torchvision

    from mnv2_fused import convert
    from mnv2_fused.bench.models import randomize
    from mnv2_fused.families import READERS, base_class_path

    torch.manual_seed(0)
    net = randomize(torchvision.models.efficientnet_b0(), seed=0, conv_gain=1.0).eval()
    inputs = {}

    def record(module, inp, out):
        inputs[module] = tuple(inp[0].shape[1:])

    hooks = [m.register_forward_hook(record) for m in net.modules() if base_class_path(m) in READERS]
    with torch.no_grad():
        net(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    convert(net)
    return [(i, block, shape) for i, (block, shape) in enumerate(inputs.items())]


def in_mode(mode, fn):
    def run():
        os.environ["MNV2_FUSED_SE"] = mode
        return fn()
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args()
    from mnv2_fused.families import read_layers

    print("EfficientNet-B0 blocks; median ms; kept = the depthwise output per image; "
          "recompute/keep = median over alternating rounds")
    print(f"{'block':<7}{'input':<16}{'batch':>6}{'kept MiB':>9}{'keep':>8}{'recompute':>11}{'recompute/keep':>16}")
    try:
        for i, block, shape in blocks():
            layers = read_layers(block)
            hidden, stride = layers.depthwise[0].in_channels, layers.depthwise[0].stride[0]
            kept_mib = -(-shape[1] // stride) * -(-shape[2] // stride) * hidden * 4 / 2**20
            for batch in args.batch:
                x = torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last)
                with torch.no_grad():
                    fn = lambda: block(x)  # noqa: E731
                    ratio, keep, recompute = alternating_ratio(in_mode("keep", fn), in_mode("recompute", fn),
                                                               rounds=args.rounds, repeat=20 if batch == 1 else 4)
                print(f"{i:<7}{str(shape):<16}{batch:>6}{kept_mib:>9.2f}{keep * 1e3:>8.3f}{recompute * 1e3:>11.3f}"
                      f"{ratio:>15.2f}x", flush=True)
    finally:
        os.environ.pop("MNV2_FUSED_SE", None)


if __name__ == "__main__":
    main()
