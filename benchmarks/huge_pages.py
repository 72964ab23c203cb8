"""A converted mobilenet_v2 with its arena, or its weights, in transparent huge pages against the
same model with them in 4 KiB pages, in alternating blocks of forwards in one process.

    python benchmarks/huge_pages.py [--part arena|weights] [--batch 1] [--rounds 100] [--runs 15] [--huge-first]

Two bound calls of one model (README, How the CPU kernel works, MNV2_FUSED_HUGE_PAGES). --part
arena: the same weights, each call's arena sized with MNV2_FUSED_HUGE_PAGES=0 and =1. --part
weights: the weights as folded with MNV2_FUSED_HUGE_PAGES=0 and the same copied into huge pages,
both arenas in huge pages. --huge-first makes the huge-page call first, so that each order of
making them can be read. Prints the ratio (huge pages / 4 KiB pages, the median of the rounds'
ratios, see measure.alternating_ratio) and both medians.
"""
import argparse
import os
import sys
from contextlib import contextmanager

import torch
import torchvision

from mnv2_fused import convert
from mnv2_fused.bench.measure import alternating_ratio
from mnv2_fused.bench.models import randomize
from mnv2_fused.network import _in_huge_pages


@contextmanager
def huge_pages(setting: str):
    """MNV2_FUSED_HUGE_PAGES set to `setting` for the block."""
    before = os.environ.get("MNV2_FUSED_HUGE_PAGES")
    os.environ["MNV2_FUSED_HUGE_PAGES"] = setting
    try:
        yield
    finally:
        if before is None:
            del os.environ["MNV2_FUSED_HUGE_PAGES"]
        else:
            os.environ["MNV2_FUSED_HUGE_PAGES"] = before


def bound_call(net, weights, x, setting: str):
    """A new bound call of `weights`, its arena sized under the setting."""
    with huge_pages(setting):
        call = net._network_call(weights, net._bound._versions)
        for _ in range(2):  # the first forward sizes the arena, the second runs in it
            call(x)
    return call


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["arena", "weights"], default="arena")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--runs", type=int, default=15, help="timed forwards per block")
    p.add_argument("--huge-first", action="store_true", help="make the huge-page call first")
    args = p.parse_args()
    if args.batch < 1 or args.rounds < 1 or args.runs < 1:
        p.error("--batch, --rounds and --runs must be positive")
    net = convert(randomize(torchvision.models.mobilenet_v2(), seed=0).eval())
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), huge_pages("0"):
        for _ in range(2):
            net(x)  # folds the weights (in 4 KiB pages) and binds the model's call
    if net._bound.call() is None:
        sys.exit("the model's forward is not one bound call here (no CPU kernel?)")
    small_weights = net._bound._value
    with torch.no_grad():
        if args.part == "arena":
            made = {"0": lambda: bound_call(net, small_weights, x, "0"),
                    "1": lambda: bound_call(net, small_weights, x, "1")}
        else:
            with huge_pages("1"):
                huge_weights = _in_huge_pages(small_weights)
            if huge_weights.head[0] is small_weights.head[0]:
                sys.exit("the weights did not go into huge pages (switched off, or the system offers none)")
            made = {"0": lambda: bound_call(net, small_weights, x, "1"),
                    "1": lambda: bound_call(net, huge_weights, x, "1")}
        order = ["1", "0"] if args.huge_first else ["0", "1"]
        calls = {setting: made[setting]() for setting in order}
        small, huge = calls["0"], calls["1"]
        if not torch.equal(small(x), huge(x)):
            sys.exit("the two calls' outputs differ")
        # The ratio of other's time to fn's: huge pages over 4 KiB pages.
        ratio, t_small, t_huge = alternating_ratio(lambda: small(x), lambda: huge(x), rounds=args.rounds,
                                                   repeat=args.runs)
    print(f"{args.part}, batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds of {args.runs} "
          f"forwards, made {'huge first' if args.huge_first else '4 KiB first'}: huge pages / 4 KiB pages "
          f"{ratio:.4f}x ({t_huge * 1e3:.3f} ms / {t_small * 1e3:.3f} ms); arenas {huge.workspace_bytes() / 2**20:.2f} "
          f"MiB and {small.workspace_bytes() / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
