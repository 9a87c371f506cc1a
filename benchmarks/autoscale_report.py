"""What the autoscaling benchmark (`autoscale_bench.py`) reports of its runs: each run's SLO
attainment, latency percentiles per model, replica-seconds and scaling actions; the table,
each policy's median over rounds, and the replica/TTFT timeline PNG. Pure accounting over the
recorded requests and replica polls (`slo`: each model's targets)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pdserve.benchmarks.report import median_range, spread

#: The compared policies: pdserve's application-level SLO policy, Ray Serve's default.
POLICIES = ("pdserve_slo", "ray_default")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def replica_seconds(timeline: list[dict[str, Any]]) -> float:
    """Engine replicas integrated over the run (each poll holds until the next)."""
    total = 0.0
    for a, b in zip(timeline, timeline[1:], strict=False):
        total += sum(v for k, v in a.items() if k != "t") * (b["t"] - a["t"])
    return total


def scaling_actions(timeline: list[dict[str, Any]]) -> int:
    """Changes of any pool's replica count between polls."""
    return sum(1 for a, b in zip(timeline, timeline[1:], strict=False)
               for k in a if k != "t" and k in b and a[k] != b[k])


def summarize(policy: str, records: list[dict[str, Any]], timeline: list[dict[str, Any]],
              slo: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A run's attainment (TTFT and mean ITL within the model's targets; failures miss),
    latency percentiles per model, replica-seconds and scaling actions."""
    out: dict[str, Any] = {"policy": policy, "replica_seconds": replica_seconds(timeline),
                           "scaling_actions": scaling_actions(timeline)}
    met_all = 0
    for model in slo:
        rows = [r for r in records if r["model"] == model]
        ok = [r for r in rows if r["ok"]]
        target = slo[model]
        met = [r for r in ok if r["ttft_ms"] is not None and r["ttft_ms"] <= target["ttft_ms"]
               and (r["itl_ms"] is None or r["itl_ms"] <= target["itl_ms"])]
        met_all += len(met)
        ttft = [r["ttft_ms"] for r in ok if r["ttft_ms"] is not None]
        itl = [r["itl_ms"] for r in ok if r["itl_ms"] is not None]
        out[model] = {"requests": len(rows), "failed": len(rows) - len(ok),
                      "slo_attainment": len(met) / len(rows) if rows else None,
                      "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
                      "itl_p50_ms": percentile(itl, 50), "itl_p99_ms": percentile(itl, 99)}
    out["slo_attainment"] = met_all / len(records) if records else None
    out["failed"] = sum(1 for r in records if not r["ok"])
    # How late the load generator sent requests (it shares the 2 cores with the server).
    out["send_late_p99_s"] = percentile([r.get("late_s", 0.0) for r in records], 99)
    return out


def _f(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def report(rows: list[dict[str, Any]], command: str, phases: Sequence[Any],
           slo: dict[str, dict[str, float]]) -> str:
    lines = ["# SLO autoscaling vs Ray Serve's default policy", "", f"Command: `{command}`", "",
             "Trace: " + ", ".join(f"{p.name} {p.seconds:.0f} s" for p in phases)
             + f"; targets {json.dumps(slo)} (TTFT p90 / ITL per request).", "",
             "| policy | SLO attainment | model | attainment | TTFT p50 | TTFT p99 | ITL p50 | "
             "ITL p99 | failed | replica-s | scaling actions |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    several = any(row.get("round", 1) > 1 for row in rows)
    for row in rows:
        label = row["policy"] + (f" r{row['round']}" if several else "")
        for model in slo:
            m = row[model]
            lines.append(
                f"| {label} | {_f(100 * row['slo_attainment'], 1)}% | {model} | "
                f"{_f(100 * (m['slo_attainment'] or 0), 1)}% | {_f(m['ttft_p50_ms'])} | "
                f"{_f(m['ttft_p99_ms'])} | {_f(m['itl_p50_ms'], 1)} | {_f(m['itl_p99_ms'], 1)} | "
                f"{m['failed']} | {_f(row['replica_seconds'])} | {row['scaling_actions']} |")
    medians = {policy: median_of([r for r in rows if r["policy"] == policy])
               for policy in dict.fromkeys(r["policy"] for r in rows)}
    if len(rows) > len(medians):
        lines += ["", "Medians over the rounds (min–max):", "",
                  "| policy | rounds | SLO attainment % | replica-s |", "|---|---|---|---|"]
        for policy, m in medians.items():
            lines.append(f"| {policy} | {m['rounds']} | {_spread(m['slo_attainment'], 100, 1)}"
                         f" | {_spread(m['replica_seconds'])} |")
    if set(medians) == set(POLICIES):
        ours, ray = medians["pdserve_slo"], medians["ray_default"]
        a, b = ours["slo_attainment"][0], ray["slo_attainment"][0]
        ratio = ours["replica_seconds"][0] / max(ray["replica_seconds"][0], 1e-9)
        lines += ["", f"Attainment {100 * a:.1f}% vs {100 * b:.1f}%; replica-seconds "
                  f"{ratio:.2f}x of Ray's" + (" (medians)." if several else ".")]
    return "\n".join(lines) + "\n"


def median_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """(median, min, max) of each policy's attainment and replica-seconds over its rounds."""
    def over_rounds(key: str) -> tuple[float, float, float]:
        return spread([r[key] for r in rows if r[key] is not None] or [0.0])  # no request: 0

    return {"rounds": len(rows), "slo_attainment": over_rounds("slo_attainment"),
            "replica_seconds": over_rounds("replica_seconds")}


def _spread(v: tuple[float, float, float], scale: float = 1.0, digits: int = 0) -> str:
    median, low, high = (x * scale for x in v)
    return median_range((median, low, high), digits)


def plot(results: dict[str, Any], path: Path, slo: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(results)
    fig, axes = plt.subplots(2, len(policies), figsize=(7 * len(policies), 7), sharex=True,
                             squeeze=False)
    for col, policy in enumerate(policies):
        timeline, records = results[policy]["timeline"], results[policy]["records"]
        ax = axes[0][col]
        for pool in sorted({k for row in timeline for k in row if k != "t"}):
            ax.step([r["t"] for r in timeline], [r.get(pool, 0) for r in timeline],
                    where="post", label=pool)
        ax.set_title(f"{policy}: replicas per pool")
        ax.set_ylabel("replicas")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        for model in slo:
            pts = [(r["t"], r["ttft_ms"]) for r in records if r["model"] == model and r["ok"]
                   and r.get("ttft_ms") is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=4, label=f"{model} TTFT")
            ax.axhline(slo[model]["ttft_ms"], linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("seconds into the trace")
        ax.set_ylabel("TTFT ms")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
