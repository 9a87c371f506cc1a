"""Interleaved rounds of systems under the same loads, and their medians with ranges.

Absolute numbers on a shared 2-core box swing ~2x between runs, so a comparison runs every
system once per round (round 1: each system in turn, then round 2, ...), lets a drift of the
box hit all of them alike, and reports per (system, load) the median over rounds with
min–max, and the median of the per-round ratios against a baseline measured in the same
round. Each load step also records the CPU every process of the system used (`process_cpu`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pdserve.benchmarks import process_cpu, report, systems, workloads
from pdserve.benchmarks.systems import System

#: Load name -> the arguments of vLLM's serving benchmark for one system.
Loads = dict[str, Callable[[System], list[str]]]
#: Extra summary fields from vLLM's detailed result (per-request lists).
Extra = Callable[[dict[str, Any]], dict[str, Any]]


def add_round_arguments(p: argparse.ArgumentParser, system_names: tuple[str, ...]) -> None:
    """`--systems`, `--rounds` and `--more`: what every interleaved-rounds benchmark takes."""
    p.add_argument("--systems", default=",".join(system_names))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--more", action="store_true",
                   help="add --rounds rounds to the report already in --out")


@dataclass(frozen=True)
class Cell:
    """One (system, load) over all rounds: median and range of each column, and the median
    (range) of the per-round ratio against the baseline."""

    median: dict[str, float | None]
    low: dict[str, float | None]
    high: dict[str, float | None]
    ratio: dict[str, float | None]
    ratio_low: dict[str, float | None]
    ratio_high: dict[str, float | None]
    rounds: int


def _stats(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return report.spread(values)


def summarize(rows: list[dict[str, Any]], columns: tuple[report.Metric, ...],
              baseline: str) -> dict[tuple[str, str], Cell]:
    """Medians over rounds, and medians of same-round ratios against `baseline`."""
    ok = [r for r in rows if r.get("summary")]
    base = {(r["round"], r["load"]): r["summary"] for r in ok if r["system"] == baseline}
    cells: dict[tuple[str, str], Cell] = {}
    for key in sorted({(r["system"], r["load"]) for r in ok}):
        mine = [r for r in ok if (r["system"], r["load"]) == key]
        med, low, high, rat, rat_low, rat_high = {}, {}, {}, {}, {}, {}
        for c in columns:
            values = [r["summary"][c.key] for r in mine if r["summary"].get(c.key) is not None]
            med[c.key], low[c.key], high[c.key] = _stats(values)
            ratios = []
            for r in mine:
                b = base.get((r["round"], r["load"]))
                ratio = report._ratio(r["summary"].get(c.key), b and b.get(c.key), c.key)
                if ratio is not None:
                    ratios.append(ratio)
            rat[c.key], rat_low[c.key], rat_high[c.key] = _stats(ratios)
        cells[key] = Cell(med, low, high, rat, rat_low, rat_high, len(mine))
    return cells


def _span(mid: float | None, low: float | None, high: float | None, unit: str = "") -> str:
    if mid is None:
        return "–"
    return f"{mid:.2f}{unit} ({low:.2f}–{high:.2f})"


def tables(rows: list[dict[str, Any]], columns: tuple[report.Metric, ...],
           baseline: str) -> list[str]:
    """Markdown: medians (min–max) per (load, system), then same-round ratios to `baseline`,
    then where the CPU went, then failed steps."""
    cells = summarize(rows, columns, baseline)
    order = sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    head = ["load", "system", "rounds", *(c.label for c in columns)]
    lines = ["## Median (min–max) over rounds", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (system, load), cell in order:
        lines.append("| " + " | ".join([load, system, str(cell.rounds), *(
            _span(cell.median[c.key], cell.low[c.key], cell.high[c.key]) for c in columns)])
            + " |")
    lines += ["", f"## Ratio to `{baseline}` in the same round: median (min–max)", "",
              f"Latencies below 1× and rates above 1× beat `{baseline}`.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (system, load), cell in order:
        if system == baseline:
            continue
        lines.append("| " + " | ".join([load, system, str(cell.rounds), *(
            _span(cell.ratio[c.key], cell.ratio_low[c.key], cell.ratio_high[c.key], "×")
            for c in columns)]) + " |")
    lines += cpu_section(rows)
    failed = [r for r in rows if not r.get("summary")]
    if failed:
        lines += ["", "## Failed steps", ""]
        lines += [f"- round {r['round']} {r['system']}/{r['load']}: {r.get('error')}"
                  for r in failed]
    return lines


def system_lines(meta: dict[str, Any]) -> list[str]:
    """Each system's command, config, start-up times and nice values."""
    lines = []
    for name, info in meta["systems"].items():
        env = " ".join(f"{k}={v}" for k, v in (info.get("env") or {}).items())
        lines.append(f"- **{name}**: `{(env + ' ') if env else ''}{info['command']}`"
                     + (f" ([config]({info['config']}))" if info.get("config") else "")
                     + f"; ready after {info.get('startup_s', [])} s; nice values (from /proc) "
                     f"`{json.dumps(info.get('nice', {}))}`")
    return lines


def cpu_per_request(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (system, load): median over rounds of each process role's CPU ms per request."""
    per: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        if not r.get("cpu_s") or not r.get("completed"):
            continue
        roles = per.setdefault((r["system"], r["load"]), {})
        for name, seconds in r["cpu_s"].items():
            roles.setdefault(name, []).append(1000 * seconds / r["completed"])
    return {key: {name: statistics.median(v) for name, v in roles.items()}
            for key, roles in per.items()}


def cpu_section(rows: list[dict[str, Any]]) -> list[str]:
    """Where each system's CPU goes per request: the profile behind the ratios."""
    cells = cpu_per_request(rows)
    if not cells:
        return []
    lines = ["", "## CPU ms per completed request, by process (median over rounds)", "",
             "Read from `/proc` before and after each load step: the system's process tree "
             "and the harness (vLLM's load generator runs in it).", "",
             "| load | system | total (without harness) | by process |", "|---|---|---|---|"]
    for (system, load), roles in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        served = sum(v for name, v in roles.items() if name != process_cpu.HARNESS_ROLE)
        parts = ", ".join(f"{name} {v:.1f}" for name, v in
                          sorted(roles.items(), key=lambda kv: -kv[1]) if v >= 0.05)
        lines.append(f"| {load} | {system} | {served:.1f} | {parts} |")
    return lines


def write(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]],
          columns: tuple[report.Metric, ...], baseline: str, markdown: str) -> None:
    payload = {**meta, "results": rows, "summary": {
        f"{s}/{load}": asdict(cell)
        for (s, load), cell in summarize(rows, columns, baseline).items()}}
    (out / "report.json").write_text(json.dumps(report.jsonable(payload), indent=2,
                                                default=str) + "\n")
    (out / "report.md").write_text(markdown)


def step_summary(result: dict[str, Any], extra: Extra | None = None) -> dict[str, Any]:
    """A row's summary of one load step: vLLM's scalars, plus what `extra` derives."""
    return {**report.summarize(result), **(extra(result) if extra else {})}


def run_round(n: int, built: list[System], loads: Loads, out: Path, meta: dict[str, Any],
              rows: list[dict[str, Any]], preload: list[str], ready_timeout_s: float,
              extra: Extra | None = None,
              on_step: Callable[[], None] = lambda: None) -> None:
    """Start each system, run every load against it, stop it; a row per (system, load).
    `on_step` runs after each system (to rewrite the report as results come in)."""
    for system in built:
        info = meta["systems"][system.name]
        try:
            if system.ray_cluster:
                systems.wait_for_no_ray(600)
            log = out / "logs" / f"{system.name}.round{n}.server.log"
            with systems.running(system, log, preload, ready_timeout_s) as started:
                info.setdefault("startup_s", []).append(round(started.startup_s, 1))
                info["nice"] = systems.priorities(started.pid)
                for load_name, argv_of in loads.items():
                    step = f"{system.name}__{load_name}__r{n}"
                    before = process_cpu.snapshot(started.pid)
                    waited = process_cpu.wait_snapshot(started.pid)
                    result = workloads.run_bench(argv_of(system),
                                                 out / "logs" / f"{step}.bench.log")
                    cpu = process_cpu.by_role(before, process_cpu.snapshot(started.pid))
                    wait = process_cpu.by_role(waited, process_cpu.wait_snapshot(started.pid))
                    (out / "raw").mkdir(parents=True, exist_ok=True)
                    (out / "raw" / f"{step}.json").write_text(json.dumps(result, default=str))
                    summary = step_summary(result, extra)
                    rows.append({"round": n, "system": system.name, "load": load_name,
                                 "summary": summary, "cpu_s": cpu, "wait_s": wait,
                                 "completed": result.get("completed")})
                    print(f"round {n} {system.name}/{load_name}: {result.get('completed')} "
                          f"completed, {result.get('failed')} failed", flush=True)
        except Exception as e:  # one failed system must not lose the others
            traceback.print_exc()
            done = {r["load"] for r in rows if r["round"] == n and r["system"] == system.name}
            rows += [{"round": n, "system": system.name, "load": name, "summary": None,
                      "error": repr(e)[:300]} for name in loads if name not in done]
        on_step()


def continue_report(out: Path, meta: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The rows of the report in `out` and the next round's number; `meta` keeps the earlier
    invocations (command, commit, date) and each system's start-up times."""
    previous = json.loads((out / "report.json").read_text())
    rows = previous["results"]
    earlier = previous.get("earlier", [])
    own_rounds = previous["rounds"] - sum(e["rounds"] for e in earlier)
    meta["earlier"] = [*earlier, {**{k: previous.get(k) for k in ("command", "git_revision",
                                                                  "date")},
                                  "rounds": own_rounds}]
    for name, info in meta["systems"].items():
        info["startup_s"] = list(previous["systems"].get(name, {}).get("startup_s", []))
    return rows, max((r["round"] for r in rows), default=0) + 1
