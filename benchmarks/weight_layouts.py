"""What a weight's layout costs mnv2_fused.linear on the CPU: the weight packed as the modules cache
it (mnv2_fused.layout.pack_columns), in nn.Linear's (O, K) layout (packed on every call), stored
(K, O) (read in place, unpacked), and torch.nn.functional.linear on the (O, K) weight; each timed
in alternation with the packed one in one process, medians of the rounds' ratios.

    python benchmarks/weight_layouts.py [--rounds 8]
"""
import argparse

import torch
import torch.nn.functional as F

from mnv2_fused.bench.measure import alternating_ratio
from mnv2_fused.layout import pack_columns

# (rows, K, O): MobileNetV2's classifier at batch 1 and 8, its last 1x1 convolution over 7 x 7
# pixels, and its first expand (16 -> 96) over 112 x 112 pixels.
SHAPES = [(1, 1280, 1000), (8, 1280, 1000), (49, 320, 1280), (12544, 16, 96)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args()
    print(f"{torch.get_num_threads()} threads; times in us; ratio: that layout's time / the packed one's")
    print(f"{'rows x K -> O':>20} {'packed':>8} {'(O, K)':>15} {'(K, O)':>15} {'F.linear':>15}")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rows, k, o in SHAPES:
            x, w, b = torch.randn(rows, k, generator=g), torch.randn(o, k, generator=g), torch.randn(o, generator=g)
            packed, stored_ko = pack_columns(w), w.t().contiguous().t()
            ref = torch.ops.mnv2_fused.linear(x, packed, b)
            for weight in (w, stored_ko):
                torch.testing.assert_close(torch.ops.mnv2_fused.linear(x, weight, b), ref)
            cells = []
            for other in (lambda: torch.ops.mnv2_fused.linear(x, w, b),
                          lambda: torch.ops.mnv2_fused.linear(x, stored_ko, b), lambda: F.linear(x, w, b)):
                ratio, mine, theirs = alternating_ratio(lambda: torch.ops.mnv2_fused.linear(x, packed, b), other,
                                                        rounds=args.rounds, repeat=20)
                cells.append(f"{theirs * 1e6:7.1f} ({ratio:4.2f}x)")
            print(f"{f'{rows} x {k} -> {o}':>20} {mine * 1e6:8.1f} " + " ".join(f"{c:>15}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
