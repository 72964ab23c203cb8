"""Bar chart of latency and peak memory per provider (matplotlib, from the `bench` extra)."""
from __future__ import annotations


def bar_chart(results: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].bar(names, [results[n]["ms"] for n in names], color="tab:blue")
    axes[0].set_ylabel("latency (ms, median)")
    mem = [(n, results[n]["peak_bytes"]) for n in names if results[n].get("peak_bytes") is not None]
    axes[1].bar([n for n, _ in mem], [b / 2**20 for _, b in mem], color="tab:orange")
    axes[1].set_ylabel("peak CPU memory (MiB)")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=15)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
