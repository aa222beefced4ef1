"""Bar charts of a benchmark report: latency and GFLOP/s per case, one bar per system.

run.py calls `plot_report` after a run when matplotlib is installed; to redraw from a saved
report:

    python benchmarks/plot.py benchmarks/results/amd-epyc-2c-avx2.json   # writes the .png beside it
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

METRICS = [
    ("median_s", "median latency (ms, log scale)", 1e3, "log"),
    ("gflops", "GFLOP/s", 1.0, "linear"),
]


def plot_report(report: dict[str, Any], path: pathlib.Path) -> None:
    """One column per thread count, one row per metric; cases on the x axis."""
    threads = report["settings"]["threads"]
    labels = report["settings"]["labels"]
    fig, axes = plt.subplots(
        len(METRICS), len(threads), figsize=(7 * len(threads), 9), squeeze=False
    )
    for col, k in enumerate(threads):
        rows = [r for r in report["results"] if r["threads"] == k]
        for row_index, metric in enumerate(METRICS):
            draw_bars(axes[row_index][col], rows, labels, metric)
        axes[0][col].set_title(f"{k} thread{'s' if k > 1 else ''}")
    peak = report.get("peak", {})
    for col, k in enumerate(threads):
        gflops = peak.get(str(k), {}).get("gflops")
        if gflops:
            axes[1][col].axhline(gflops, color="grey", linestyle="--", linewidth=0.8)
            axes[1][col].annotate(f"peak {gflops:.0f}", (0, gflops), fontsize=7, va="bottom")
    handles, names = axes[0][0].get_legend_handles_labels()
    # as many columns as fit the figure's width (about 1.8 inches a name), rows below the axes
    columns = max(1, min(len(names), int(fig.get_figwidth() / 1.8)))
    rows = -(-len(names) // columns)
    fig.legend(handles, names, loc="lower center", ncol=columns, fontsize=8)
    quick = " (quick run, not for comparison)" if report["settings"].get("quick") else ""
    fig.suptitle(f"tilefuse benchmark, {report['machine']['date']}{quick}")
    fig.tight_layout(rect=(0, 0.02 + 0.03 * rows, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_bars(ax: Any, rows: list[dict], labels: dict[str, str], metric: tuple) -> None:
    key, title, scale, yscale = metric
    cases = list(dict.fromkeys(r["case"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        values = {r["case"]: r.get(key) for r in rows if r["system"] == system}
        xs = [c + (i - (len(systems) - 1) / 2) * width for c in range(len(cases))]
        heights = [(values.get(case) or 0) * scale for case in cases]
        ax.bar(xs, heights, width, label=labels.get(system, system))
    ax.set_xticks(range(len(cases)), cases, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(title)
    ax.set_yscale(yscale)
    ax.grid(axis="y", alpha=0.3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot a benchmark report (JSON) as a PNG.")
    parser.add_argument("report", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, help="PNG path (default: beside the report)")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    plot_report(report, args.out or args.report.with_suffix(".png"))


if __name__ == "__main__":
    main()
