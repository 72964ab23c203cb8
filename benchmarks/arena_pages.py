"""A converted mobilenet_v2 with its arena in a transparent huge page against the same model with
its arena in 4 KiB pages, in alternating blocks of forwards in one process.

    python benchmarks/arena_pages.py [--batch 1] [--rounds 100] [--runs 15] [--huge-first]

Two bound calls of one model, each with an arena of its own, sized with MNV2_FUSED_HUGE_PAGES=0
and =1 (README, How the CPU kernel works); --huge-first makes the huge-page one first, so that
each order of making them can be read. Prints the ratio (huge pages / 4 KiB pages, the median of
the rounds' ratios, see measure.alternating_ratio), both medians and each arena's size.
"""
import argparse
import os
import sys

import torch
import torchvision

from mnv2_fused import convert
from mnv2_fused.bench.measure import alternating_ratio
from mnv2_fused.bench.models import randomize


def bound_call(net, x, huge_pages: str):
    """A new bound call of the model's folded weights, its arena sized under the setting."""
    os.environ["MNV2_FUSED_HUGE_PAGES"] = huge_pages
    try:
        call = net._network_call(net._bound._value, net._bound._versions)
        for _ in range(2):  # the first forward sizes the arena, the second runs in it
            call(x)
    finally:
        del os.environ["MNV2_FUSED_HUGE_PAGES"]
    return call


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--runs", type=int, default=15, help="timed forwards per block")
    p.add_argument("--huge-first", action="store_true", help="make the huge-page arena's call first")
    args = p.parse_args()
    if args.batch < 1 or args.rounds < 1 or args.runs < 1:
        p.error("--batch, --rounds and --runs must be positive")
    net = convert(randomize(torchvision.models.mobilenet_v2(), seed=0).eval())
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(2):
            net(x)  # binds the model's call: its folded weights and their versions
        if net._bound.call() is None:
            sys.exit("the model's forward is not one bound call here (no CPU kernel?)")
        order = ["1", "0"] if args.huge_first else ["0", "1"]
        calls = {setting: bound_call(net, x, setting) for setting in order}
        small, huge = calls["0"], calls["1"]
        if not torch.equal(small(x), huge(x)):
            sys.exit("the two arenas' outputs differ")
        # The ratio of other's time to fn's: huge pages over 4 KiB pages.
        ratio, t_small, t_huge = alternating_ratio(lambda: small(x), lambda: huge(x), rounds=args.rounds,
                                                   repeat=args.runs)
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds of {args.runs} forwards, "
          f"made {'huge first' if args.huge_first else '4 KiB first'}: huge pages / 4 KiB pages {ratio:.4f}x "
          f"({t_huge * 1e3:.3f} ms / {t_small * 1e3:.3f} ms); arenas {huge.workspace_bytes() / 2**20:.2f} MiB and "
          f"{small.workspace_bytes() / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
