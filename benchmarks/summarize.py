"""Turn a saved pytest-benchmark run into a comparison table (and optionally a PNG chart).

    python benchmarks/summarize.py benchmarks/results/cpu.json [--plot chart.png] [--markdown] [--peak-gflops 150]
    python benchmarks/summarize.py benchmarks/results/anchors.json --anchors [--plot anchors.png]
        (the run of benchmarks/test_anchors.py)
"""
import argparse
import json
from collections import defaultdict


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json_file")
    p.add_argument("--plot", default=None,
                   help="write a chart of fused speed-ups (with --anchors: of the anchors table) to this PNG")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (the README's)")
    p.add_argument("--peak-gflops", type=float, default=150.0, help="machine fp32 GEMM peak for the fraction column")
    p.add_argument("--anchors", action="store_true", help="the anchors and contention run (Markdown)")
    args = p.parse_args()
    data = json.load(open(args.json_file))
    if args.anchors:
        print_anchors(data)
        if args.plot:
            write_anchors_plot(data, args.plot)
        return
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        if "provider" not in b["params"]:  # benchmarks/test_anchors.py's, in a run of all of benchmarks/
            continue
        provider = b["params"]["provider"]
        groups[b["group"]][provider] = b
    providers = ["fused", "eager_nchw", "eager_channels_last", "onnxruntime", "compile"]
    header = (f"{'configuration':<48}" + "".join(f"{p[:12]:>13}" for p in providers)
              + f"{'fused/ORT':>10}{'altern.':>8}{'GFLOP/s':>9}{'of peak':>8}{'fused MiB':>10}{'eager MiB':>10}")
    if args.plot:
        write_plot(groups, providers, args.plot)
    if args.markdown:
        print_markdown(groups, providers, args.peak_gflops)
        return
    print(header)
    for group, entries in groups.items():
        med = medians(entries, providers)
        line = f"{group:<48}" + "".join(f"{med[p]:>12.3f}m" if p in med else f"{'-':>13}" for p in providers)
        fused = entries.get("fused")
        ratio = med["onnxruntime"] / med["fused"] if "fused" in med and "onnxruntime" in med else float("nan")
        gflops = (fused["extra_info"].get("gflops") if fused else None) or float("nan")
        fmem = fused["extra_info"].get("peak_bytes") if fused else None
        emem = entries.get("eager_nchw", {}).get("extra_info", {}).get("peak_bytes")
        alt = fused["extra_info"].get("ort_over_fused", float("nan")) if fused else float("nan")
        line += f"{ratio:>9.2f}x{alt:>7.2f}x{gflops:>9.1f}{gflops / args.peak_gflops:>8.0%}"
        mib = [m / 2**20 if m is not None else float("nan") for m in (fmem, emem)]
        line += f"{mib[0]:>10.2f}{mib[1]:>10.2f}"
        print(line)
    print("\nmedian latency in ms; fused/ORT > 1 means the fused kernel is faster than ONNX Runtime: from the")
    print("medians above, and (altern.) from alternating blocks of fused and ONNX Runtime runs, steadier on a")
    print("shared machine.")
def medians(entries, providers):
    """Median latency in ms of each provider that ran the configuration."""
    return {p: entries[p]["stats"]["median"] * 1e3 for p in providers if p in entries}


def pyplot():
    """matplotlib's pyplot, drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plot(groups, providers, path):
    """A bar chart of each provider's latency over the fused one's, per configuration."""
    plt = pyplot()
    rows = [(g, medians(entries, providers)) for g, entries in groups.items()]
    rows = [(g, m) for g, m in rows if "fused" in m]
    fig, ax = plt.subplots(figsize=(10, max(3, 0.3 * len(rows))))
    for i, prov in enumerate(["eager_nchw", "onnxruntime", "compile"]):
        vals = [m.get(prov, float("nan")) / m["fused"] for _, m in rows]
        ax.barh([j + 0.25 * i for j in range(len(rows))], vals, height=0.25, label=f"{prov} / fused")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([g for g, _ in rows], fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("latency relative to fused (>1: fused is faster)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_anchors_plot(data, path):
    """The anchors table as a chart: each runtime's time over mnv2_fused's (alternating) by batch, and
    each provider's slowdown with one core busy, against the 2x that losing half of 2 cores costs."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [2, 1]})
    for ax, prefix, key, line, xlabel in (
            (left, "test_anchor", "fused_speedup", 1.0, "runtime / mnv2_fused, alternating (>1: mnv2_fused is faster)"),
            (right, "test_contention", "slowdown", 2.0, "slowdown with one of 2 cores busy")):
        runs = [b for b in data["benchmarks"] if b["name"].startswith(prefix)]
        batches = sorted({b["params"]["batch"] for b in runs})
        names = sorted({b["params"]["name"] for b in runs})
        for i, batch in enumerate(batches):
            by_name = {b["params"]["name"]: b["extra_info"][key] for b in runs if b["params"]["batch"] == batch}
            ax.barh([j + 0.4 * i for j in range(len(names))], [by_name.get(n, float("nan")) for n in names],
                    height=0.4, label=f"batch {batch}")
        ax.set_yticks([j + 0.2 * (len(batches) - 1) for j in range(len(names))])
        ax.set_yticklabels(names)
        ax.axvline(line, color="k", lw=0.8)
        ax.set_xlim(0, 1.3 * max([b["extra_info"][key] for b in runs] + [line]))
        ax.set_xlabel(xlabel, fontsize=8)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_markdown(groups, providers, peak):
    names = {"fused": "fused", "eager_nchw": "eager NCHW", "eager_channels_last": "eager CL", "compile": "compile",
             "onnxruntime": "ONNX Runtime"}
    order = ["fused", "eager_nchw", "eager_channels_last", "compile", "onnxruntime"]
    print("| configuration | " + " | ".join(names[p] for p in order)
          + " | ORT/fused | ORT/fused alternating | fused GFLOP/s | fused peak MiB | eager peak MiB |")
    print("|---" * (len(order) + 6) + "|")
    for group, entries in groups.items():
        med = medians(entries, providers)
        info = entries.get("fused", {}).get("extra_info", {})
        ratio = med["onnxruntime"] / med["fused"] if "fused" in med and "onnxruntime" in med else float("nan")
        alt, gflops = info.get("ort_over_fused", float("nan")), info.get("gflops") or float("nan")
        fmem = info.get("peak_bytes")
        emem = entries.get("eager_nchw", {}).get("extra_info", {}).get("peak_bytes")
        cells = [f"{med[p]:.3f}" if p in med else "-" for p in order]
        mib = [f"{m / 2**20:.2f}" if m is not None else "-" for m in (fmem, emem)]
        flops_cell = "-" if gflops != gflops else f"{gflops:.0f} ({gflops / peak:.0%})"
        print(f"| {group} | " + " | ".join(cells) + f" | {ratio:.2f}x | **{alt:.2f}x** | {flops_cell}"
              + f" | {mib[0]} | {mib[1]} |")


def print_anchors(data):
    """The other runtimes against the fused network (fused_speedup > 1: the fused one is faster),
    and the slowdown of each under load."""
    anchors = [b for b in data["benchmarks"] if b["name"].startswith("test_anchor")]
    print("| runtime | batch | runtime ms | mnv2_fused ms | runtime / mnv2_fused (alternating) |")
    print("|---|---|---|---|---|")
    for b in sorted(anchors, key=lambda b: (b["params"]["batch"], b["params"]["name"])):
        e = b["extra_info"]
        print(f"| {b['params']['name']} | {b['params']['batch']} | {e['anchor_ms']:.2f} | {e['fused_ms']:.2f} | "
              f"**{e['fused_speedup']:.2f}x** |")
    loads = [b for b in data["benchmarks"] if b["name"].startswith("test_contention")]
    if loads:
        print("\n| provider | batch | quiet ms | one core busy ms | slowdown |")
        print("|---|---|---|---|---|")
        for b in sorted(loads, key=lambda b: (b["params"]["batch"], b["params"]["name"])):
            e = b["extra_info"]
            print(f"| {b['params']['name']} | {b['params']['batch']} | {e['quiet_ms']:.2f} | {e['loaded_ms']:.2f} | "
                  f"**{e['slowdown']:.2f}x** |")


if __name__ == "__main__":
    main()
