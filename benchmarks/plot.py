"""One PNG comparing systems per workload: throughput, goodput and latency percentiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on benchmark machines
import matplotlib.pyplot as plt  # noqa: E402

# (title, p50-or-only key, optional p99 key drawn as a lighter bar on top)
PANELS: tuple[tuple[str, str, str | None], ...] = (
    ("request throughput (req/s) ↑", "request_throughput", None),
    ("output throughput (tok/s) ↑", "output_throughput", None),
    ("goodput under SLO (req/s) ↑", "request_goodput", None),
    ("TTFT ms ↓ (p50 solid, p99 light)", "p50_ttft_ms", "p99_ttft_ms"),
    ("ITL ms ↓ (p50 solid, p99 light)", "p50_itl_ms", "p99_itl_ms"),
    ("TPOT ms ↓ (p50 solid, p99 light)", "p50_tpot_ms", "p99_tpot_ms"),
)


def _value(rows: list[dict[str, Any]], system: str, workload: str, key: str) -> float:
    for r in rows:
        if r["system"] == system and r["workload"] == workload and r["summary"]:
            v = r["summary"].get(key)
            return float(v) if v is not None else 0.0
    return 0.0


def _panel(ax: Any, rows: list[dict[str, Any]], systems: list[str], workloads: list[str],
           panel: tuple[str, str, str | None]) -> None:  # fmt: skip
    title, key, p99_key = panel
    width = 0.8 / max(len(systems), 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, system in enumerate(systems):
        xs = [w + (i - (len(systems) - 1) / 2) * width for w in range(len(workloads))]
        color = colors[i % len(colors)]
        if p99_key:
            tops = [_value(rows, system, w, p99_key) for w in workloads]
            ax.bar(xs, tops, width, color=color, alpha=0.35)
        vals = [_value(rows, system, w, key) for w in workloads]
        bars = ax.bar(xs, vals, width, color=color, label=system)
        ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(range(len(workloads)), workloads, fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def plot_rows(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Grouped bars: x = workload, one bar per system, one panel per metric."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, panel in zip(axes.flat, PANELS, strict=True):
        _panel(ax, rows, systems, workloads, panel)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncols=len(systems))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
