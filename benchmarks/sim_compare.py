"""The simulator's validation, compared: each measured run of `sim_validation` replayed
through `pdserve simulate`'s graph and set beside what was measured (`validation.{md,json,png}`,
one calibrated profile per system), with the served engines' work per profiled step per load.

    python -m pdserve.benchmarks.sim_validation --compare --profile P --out OUT
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pdserve.benchmarks import process_cpu, systems
from pdserve.benchmarks.sim_validation import (
    CALIBRATION_LOADS,
    COMPARED,
    CONCURRENCY_1_LOADS,
    CPU_ONLY_LOADS,
    MAX_CONCURRENCY,
    NUM_WARMUPS,
    VALIDATION_LOADS,
    load_argv,
)
from pdserve.simulation.profile_file import GraphOverhead


def compare(args: argparse.Namespace) -> None:
    from pdserve.simulation import calibration, profile_file
    from pdserve.simulation.serve_config import load_app, pick_model

    out = args.out
    profile = profile_file.load(args.profile)
    measured = json.loads((out / "report.json").read_text())
    table: list[dict[str, Any]] = []
    work: list[dict[str, Any]] = []  # engine_work's ratios, per system and load
    waits: list[dict[str, Any]] = []  # engine_waits', per system and load
    graph: list[dict[str, Any]] = []  # graph_cpu's ratios, per system and load
    calibration_dir = args.calibration or out
    calibrating = json.loads((calibration_dir / "report.json").read_text())
    for system in measured["systems"]:
        model = pick_model(load_app(out / "configs" / f"{system}.yaml"), None)
        raws = {load: sorted((out / "raw").glob(f"{system}__{load}__r*.json"))
                for load in VALIDATION_LOADS}
        c1_rows, load_runs = calibration_rows(calibrating, calibration_dir, system)
        runs = [raw_path(calibration_dir, r) for r in c1_rows]
        cores = measured["machine"].get("cpu_affinity") or measured["machine"]["cpu_count"]
        overhead = calibration.graph_overhead(
            profile, model, runs, [r["cpu_s"] for r in c1_rows] if args.cpu_model else None,
            cores, steps=args.step_model,
            prompts=[sent_prompts(r["load"], calibrating, calibration_dir, model.model)
                     for r in c1_rows] if args.prompts else None,
            prompt_cost=args.prompt_cost,
            engine_waits=c1_waits(c1_rows, system) if args.busy_cores and args.cpu_model
            else None,
            load_runs=load_runs if args.cpu_model and args.load_cpu else None)
        # the profile's window (calibration starts from the default), unless --cpu-window
        overhead = overhead.with_cpu_window(profile.graph_overhead.cpu_window_s
                                            if args.cpu_window is None else args.cpu_window)
        # The profile as `pdserve simulate` takes it for this system: measured engine plus the
        # served graph's calibrated overhead.
        profile.model_copy(update={"graph_overhead": overhead}).save(
            out / f"profile-{system}{args.suffix}.json")
        replays: dict[Path, dict[str, Any]] = {}  # result file -> its replay with `overhead`
        for load in VALIDATION_LOADS:
            prompts = sent_prompts(load, measured, out, model.model) if args.prompts else None
            runs = []
            for raw in raws[load]:
                real = json.loads(raw.read_text())
                replays[raw] = calibration.simulated(profile, model, raw, overhead, prompts)
                runs.append((real, replays[raw]))
            if not runs:
                continue
            row: dict[str, Any] = {"system": system, "load": load, "rounds": len(runs),
                                   "overhead": overhead.model_dump()}
            for key in (*COMPARED, "p99_itl_ms", "request_throughput"):
                real_values = [r[key] for r, _ in runs]
                sim_values = [s[key] for _, s in runs]
                m, s = statistics.median(real_values), statistics.median(sim_values)
                row[key] = {"measured": m, "low": min(real_values), "high": max(real_values),
                            "simulated": s, "error_pct": 100 * (s - m) / m if m else None}
            table.append(row)
        for load, (directory, report_) in {
                **{load: (calibration_dir, calibrating) for load in CALIBRATION_LOADS},
                **{load: (out, measured) for load in VALIDATION_LOADS}}.items():
            ratios = engine_work(profile, model, overhead, directory, report_, system, load,
                                 args.prompts)
            if ratios:
                work.append({"system": system, "load": load, "ratio": statistics.median(ratios),
                             "low": min(ratios), "high": max(ratios)})
            ratios = graph_cpu(profile, model, overhead, directory, report_, system, load,
                               args.prompts, replays)
            if ratios:
                graph.append({"system": system, "load": load, "ratio": statistics.median(ratios),
                              "low": min(ratios), "high": max(ratios)})
            pairs = engine_waits(profile, model, overhead, directory, report_, system, load,
                                 args.prompts)
            if pairs:
                real = [m for m, _ in pairs]
                waits.append({"system": system, "load": load,
                              "measured": statistics.median(real), "low": min(real),
                              "high": max(real),
                              "simulated": statistics.median(s for _, s in pairs)})
    result = {"profile": str(args.profile), "calibration": str(args.calibration or out),
              "step_times": profile.step_times.model_dump(),
              "kv_transfer": profile.kv_transfer and profile.kv_transfer.model_dump(),
              "prompts": args.prompts, "rows": table, "engine_work": work, "engine_wait": waits,
              "graph_cpu": graph,
              "window": {"profiled": profile.created, "calibration_runs": calibrating.get("date"),
                         "validated_runs": measured.get("date")}}
    (out / f"validation{args.suffix}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"validation{args.suffix}.md").write_text(validation_markdown(result, measured))
    plot_validation(result, out / f"validation{args.suffix}.png")
    print((out / f"validation{args.suffix}.md").read_text())


def c1_waits(rows: list[dict[str, Any]], system: str) -> list[float]:
    """The served engines' run-queue wait in each concurrency-1 row (`--busy-cores`), or a
    clear error where a row did not record it."""
    waits = [process_cpu.engine_core_cpu_s(r.get("wait_s")) for r in rows]
    if not rows or any(w is None for w in waits):
        raise SystemExit(f"--busy-cores: {system}'s concurrency-1 runs did not record the "
                         "engines' run-queue wait (runs from before sim-validation-cpu-v7)")
    return [w for w in waits if w is not None]


def raw_path(directory: Path, row: dict[str, Any]) -> Path:
    """The vLLM result file of a report row (one load step of one round)."""
    return directory / "raw" / f"{row['system']}__{row['load']}__r{row['round']}.json"


def calibration_rows(report_: dict[str, Any], directory: Path, system: str
                     ) -> tuple[list[dict[str, Any]], list[tuple[Path, dict[str, float]]]]:
    """`system`'s completed concurrency-1 rows of a report (they calibrate latency and the
    graph's CPU), ordered by round and load; and its CPU-only runs (`CPU_ONLY_LOADS`: result
    file, CPU by role), which join the CPU split only."""
    mine = [r for r in report_["results"] if r["system"] == system and r.get("summary")]
    c1_rows = sorted((r for r in mine if r["load"] in CONCURRENCY_1_LOADS),
                     key=lambda r: (r["round"], r["load"]))
    load_runs = [(raw_path(directory, r), r["cpu_s"]) for r in mine
                 if r["load"] in CPU_ONLY_LOADS and r.get("cpu_s")]
    return c1_rows, load_runs


def graph_cpu(profile: Any, model: Any, overhead: GraphOverhead, directory: Path,
              report_: dict[str, Any], system: str, load: str, prompts: bool,
              replays: dict[Path, dict[str, Any]] | None = None) -> list[float]:
    """Per round of `load` in `directory`'s runs: the CPU seconds the graph's traffic roles
    used (process accounting) over what the simulated host charged for that run's replay with
    this overhead (its requests, and the steps that handed outputs and their tokens): how well
    the demand the simulated host carries matches the real graph's, load by load (Ray's upkeep
    apart). `replays`: runs already replayed with this overhead, by result file (not again)."""
    from pdserve.simulation import calibration

    rows = [row for row in report_["results"] if (row["system"], row["load"]) == (system, load)
            and row.get("summary") and row.get("cpu_s")]
    known = replays or {}
    sent = sent_prompts(load, report_, directory, model.model) \
        if prompts and any(raw_path(directory, r) not in known for r in rows) else None
    ratios = []
    for row in rows:
        raw = raw_path(directory, row)
        replay = known.get(raw) or calibration.simulated(profile, model, raw, overhead, sent)
        run = calibration.traffic_of(json.loads(raw.read_text()), row["cpu_s"], replay)
        charged = (overhead.cpu_per_request_s * run.requests + overhead.cpu_per_step_s
                   * run.steps + overhead.cpu_per_token_s * run.handed)
        if charged > 0:
            ratios.append(run.cpu_s / charged)
    return ratios


def engine_work(profile: Any, model: Any, overhead: Any, directory: Path,
                report_: dict[str, Any], system: str, load: str, prompts: bool) -> list[float]:
    """Per round of `load` in `directory`'s runs (`report_`: their report): the served engines'
    CPU seconds (process accounting) over those the simulated engines' steps held with steps as
    profiled (this overhead without its step scale or per-step time: on the host's shared cores
    unless `--no-cpu-model` left them out), each counting the `NUM_WARMUPS` warm-up requests
    every load here sends. Above 1, a served step did more work than its profile; a step model
    calibrated where it did more than under another load misjudges that load."""
    from pdserve.simulation import calibration

    bare_steps = overhead.model_copy(update={"step_scale": 1.0, "per_step_s": 0.0,
                                             "per_prefill_token_s": 0.0})
    sent = sent_prompts(load, report_, directory, model.model) if prompts else None
    ratios = []
    for served, raw in served_runs(report_, directory, system, load, "cpu_s"):
        if not served:
            continue
        held = calibration.engine_cpu_s(profile, model, raw, bare_steps, sent, NUM_WARMUPS,
                                        MAX_CONCURRENCY.get(load))
        if held:
            ratios.append(served / held)
    return ratios


def engine_waits(profile: Any, model: Any, overhead: Any, directory: Path,
                 report_: dict[str, Any], system: str, load: str,
                 prompts: bool) -> list[tuple[float, float]]:
    """Per round of `load` in `directory`'s runs that recorded it: (the served engines'
    run-queue wait, the simulated engines' with this overhead), in seconds over the run and
    its `NUM_WARMUPS` warm-ups. Where the simulated wait falls short, the engines lost more
    of their cores to other processes than the simulated host gives away."""
    from pdserve.simulation import calibration

    sent = sent_prompts(load, report_, directory, model.model) if prompts else None
    pairs = []
    for served, raw in served_runs(report_, directory, system, load, "wait_s"):
        _, simulated = calibration.engine_seconds(profile, model, raw, overhead, sent,
                                                  NUM_WARMUPS, MAX_CONCURRENCY.get(load))
        pairs.append((served, simulated))
    return pairs


def served_runs(report_: dict[str, Any], directory: Path, system: str, load: str,
                key: str) -> list[tuple[float, Path]]:
    """(the served engines' seconds under `key` — `cpu_s` or `wait_s` —, the run's vLLM result
    file) for each completed round of `system` under `load` that recorded `key`."""
    runs = []
    for row in report_["results"]:
        served = process_cpu.engine_core_cpu_s(row.get(key))
        if row["system"] == system and row["load"] == load and row.get("summary") \
                and served is not None:
            runs.append((served, raw_path(directory, row)))
    return runs


def sent_prompts(load: str, measured: dict[str, Any], out: Path, model: str) -> list:
    """The prompts a load sent, token for token: its dataset sampled again by vLLM's own code
    with the options and seed of the measured run (every round sent the same ones)."""
    from pdserve.simulation import traces

    model_dir = systems.resolve_model_dir(model)
    target = argparse.Namespace(base_url="http://127.0.0.1:1", model_name="replay",
                                model_dir=str(model_dir))
    argv = load_argv(load, target, argparse.Namespace(**measured["load"]),  # type: ignore[arg-type]
                     out / "mixed_dataset.jsonl")
    return traces.read_vllm_dataset(shlex.join(argv), str(model_dir))


#: the graph's CPU window of an overhead saved before it had one
DEFAULT_WINDOW = GraphOverhead.model_fields["cpu_window_s"].default


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def validation_markdown(result: dict[str, Any], measured: dict[str, Any]) -> str:
    steps = result["step_times"]
    lines = [f"# Simulator validation: {measured.get('run_name', '')}", "",
             f"- measured: `{measured['command']}` at {measured.get('git_revision')}, "
             f"{measured.get('rounds')} rounds",
             f"- profile: `{result['profile']}` (step model held-out error "
             f"{_pct(steps.get('heldout_mape'))} MAPE, p90 {_pct(steps.get('heldout_p90_ape'))}; "
             f"host noise {_pct(steps.get('noise_mape'))})",
             *([f"- when: profiled {w.get('profiled')}, calibration runs from "
                f"{w.get('calibration_runs')}, validated runs from {w.get('validated_runs')} "
                "(a shared VM's speed moves within hours: measure all three in one window)"]
               if (w := result.get("window")) else []),
             "- simulated: each measured run's own requests replayed ("
             + ("arrival times and lengths from its result, prompt tokens from its dataset "
                "sampled again with its options and seed" if result.get("prompts") else
                "arrival times and lengths only: simulated prompts share no tokens")
             + "); graph overhead calibrated on the system's calibration runs in "
             f"`{result['calibration']}`", "",
             "Measured: median (min–max) over rounds; simulated: median over the same rounds' "
             "traces; error: simulated median vs measured median.", "",
             "| system | load | metric | measured | simulated | error |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for key in (*COMPARED, "p99_itl_ms", "request_throughput"):
            cell = row[key]
            error = "—" if cell["error_pct"] is None else f"{cell['error_pct']:+.1f}%"
            lines.append(f"| {row['system']} | {row['load']} | {key} | {cell['measured']:.1f} "
                         f"({cell['low']:.1f}–{cell['high']:.1f}) | {cell['simulated']:.1f} | "
                         f"{error} |")
    lines += per_load_table(
        "Served engines' CPU over the simulated steps' with steps as profiled (process "
        "accounting; median (min–max) over rounds; calibration loads first):",
        result.get("engine_work") or [],
        lambda w: f"{w['ratio']:.2f} ({w['low']:.2f}–{w['high']:.2f})")
    lines += per_load_table(
        "The graph's CPU (its replicas, proxy and the load generator; process accounting) "
        "over what the simulated host charged in the run's replay for its requests, the engine "
        "steps that handed outputs and their tokens (median (min–max) over rounds; calibration "
        "loads first):",
        result.get("graph_cpu") or [],
        lambda w: f"{w['ratio']:.2f} ({w['low']:.2f}–{w['high']:.2f})")
    lines += per_load_table(
        "Served engines' run-queue wait (schedstat, seconds over a run; median (min–max) over "
        "rounds) / the simulated engines' (steps in progress without a whole core), with the "
        "overhead used:", result.get("engine_wait") or [],
        lambda w: f"{w['measured']:.2f} ({w['low']:.2f}–{w['high']:.2f}) / {w['simulated']:.2f}")
    lines += ["", "Graph overhead used (calibrated per system on its calibration runs: latency "
              "at concurrency 1, the graph's CPU on all of them):", ""]
    seen = set()
    for row in result["rows"]:
        if row["system"] not in seen:
            seen.add(row["system"])
            o = row["overhead"]
            lines.append(f"- {row['system']}: {o['per_request_s'] * 1e3:.1f} ms per request + "
                         f"{o['per_prompt_token_s'] * 1e3:.3f} ms per prompt token, "
                         f"engine steps ×{o['step_scale']:.2f} + {o['per_step_s'] * 1e3:.2f} ms "
                         f"+ {o.get('per_prefill_token_s', 0.0) * 1e3:.3f} ms per prompt token "
                         "computed, "
                         "graph CPU "
                         f"{o['cpu_per_request_s'] * 1e3:.0f} ms per request + "
                         + (f"{o['cpu_per_step_s'] * 1e3:.2f} ms per engine step + "
                            if o.get("cpu_per_step_s") else "")
                         + f"{o['cpu_per_token_s'] * 1e3:.2f} ms per token + "
                         f"{o['background_cores']:.2f} cores at rest on "
                         f"{o['host_cores'] or '—'} cores"
                         + (f", demanded over the last {o.get('cpu_window_s', DEFAULT_WINDOW):g} s"
                            if o["host_cores"] else ""))
    return "\n".join(lines) + "\n"


def per_load_table(title: str, entries: list[dict[str, Any]],
                   cell: Callable[[dict[str, Any]], str]) -> list[str]:
    """A system-by-load table of `entries` (each with its `system` and `load`), calibration
    loads first; nothing without entries."""
    if not entries:
        return []
    loads = [*CALIBRATION_LOADS, *VALIDATION_LOADS]
    cells = {(e["system"], e["load"]): cell(e) for e in entries}
    lines = ["", title, "", "| system | " + " | ".join(loads) + " |",
             "|---" * (len(loads) + 1) + "|"]
    for system in dict.fromkeys(e["system"] for e in entries):
        lines.append(f"| {system} | "
                     + " | ".join(cells.get((system, load), "—") for load in loads) + " |")
    return lines


def plot_validation(result: dict[str, Any], path: Path) -> None:
    """Simulated against measured, one point per (system, load, metric), log-log, with the
    y = x line and a ±15 % band; the bars are the measured min–max over rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    markers = {"poisson": "o", "bursty": "s", "mixed": "^"}
    for ax, prefix in zip(axes, ("ttft", "itl"), strict=True):
        values = []
        for row in result["rows"]:
            for key in (k for k in (*COMPARED, "p99_itl_ms") if f"_{prefix}_" in k):
                cell = row[key]
                m, s = cell["measured"], cell["simulated"]
                values += [m, s]
                color = "C0" if row["system"] == "pd" else "C1"
                ax.errorbar(m, s, xerr=[[m - cell["low"]], [cell["high"] - m]], fmt=markers[
                    row["load"]], color=color, alpha=0.8)
                ax.annotate(key.split("_")[0], (m, s), fontsize=7, alpha=0.7)
        if values:
            low, high = min(values) * 0.8, max(values) * 1.25
            ax.plot([low, high], [low, high], "k-", lw=0.8)
            ax.fill_between([low, high], [low * 0.85, high * 0.85], [low * 1.15, high * 1.15],
                            color="0.9")
            ax.set_xlim(low, high)
            ax.set_ylim(low, high)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"measured {prefix.upper()} ms")
        ax.set_ylabel(f"simulated {prefix.upper()} ms")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color="C0", marker="o", ls="", label="pd"),
               plt.Line2D([], [], color="C1", marker="o", ls="", label="colocated"),
               *(plt.Line2D([], [], color="0.4", marker=m, ls="", label=load)
                 for load, m in markers.items())]
    fig.legend(handles=handles, loc="upper center", ncols=5)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=90)
    plt.close(fig)
