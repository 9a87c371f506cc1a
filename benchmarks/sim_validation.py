"""The simulator's validation: the same traces measured on the real graph and simulated.

    python -m pdserve.benchmarks.sim_validation --rounds 3 --out OUT
    python -m pdserve.benchmarks.sim_validation --compare --profile P --out OUT

Measuring runs the mixed benchmark's two systems (`pd`: one prefill and one decode engine;
`colocated`: two engines; `bench` model, one core per engine) under five loads (`--loads`),
systems interleaved per round:

- `c1`: concurrency 1, 512-token prompts, 32 out, and `c1-long`: concurrency 1, 64-token
  prompts, 256 out: calibrate the graph's overhead over the bare engine for the simulator
  (served step time, latency per request, the graph's CPU per request and per token); not
  validation points. `--loads c1,c1-long` runs only these (a calibration run of its own).
- `poisson`: open-loop Poisson arrivals, 512-token prompts, 64 out.
- `bursty`: the same lengths and mean rate, gamma inter-arrivals of shape 0.25 (vLLM's
  `--burstiness`: coefficient of variation 2).
- `mixed`: the mixed benchmark's workload (half 1536-token prompts with 16 out, half 64-token
  prompts with 256 out), Poisson.

Comparing replays each measured run's own requests (arrival times and lengths from vLLM's
detailed result) through `pdserve simulate`'s graph with the profile's step model, the
system's serve config, and the overhead calibrated on the same system's concurrency-1 runs
(`--calibration DIR`: those of another run). Per (system, load): measured median (min–max)
over rounds, simulated median, and the error of the simulated median against the measured
median, for TTFT and ITL p50/p90 (and ITL p99, requests/s).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from pdserve.benchmarks import mixed_bench, process_cpu, report, rounds, systems, workloads
from pdserve.benchmarks.workloads import LoadSettings
from pdserve.simulation.profile_file import STEP_MODELS

SYSTEMS = ("pd", "colocated")
LOADS = ("c1", "c1-long", "poisson", "bursty", "mixed")
#: Loads the simulator is calibrated on (never compared).
CALIBRATION_LOADS = ("c1", "c1-long")
VALIDATION_LOADS = ("poisson", "bursty", "mixed")
COLUMNS: tuple[report.Metric, ...] = (
    report.Metric("p50_ttft_ms", "TTFT p50 ms", False),
    report.Metric("p90_ttft_ms", "TTFT p90 ms", False),
    report.Metric("p50_itl_ms", "ITL p50 ms", False),
    report.Metric("p90_itl_ms", "ITL p90 ms", False),
    report.Metric("p99_itl_ms", "ITL p99 ms", False),
    report.Metric("request_throughput", "req/s", True),
)
#: What the comparison reports, in vLLM's summary names.
COMPARED = ("p50_ttft_ms", "p90_ttft_ms", "p50_itl_ms", "p90_itl_ms")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pdserve.benchmarks.sim_validation",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    rounds.add_round_arguments(p, SYSTEMS)
    p.add_argument("--loads", default=",".join(LOADS),
                   type=lambda v: [x for x in v.split(",") if x])
    p.add_argument("--model", default="pdserve://bench")
    p.add_argument("--rate", type=float, default=2.0, help="poisson/bursty requests/s")
    p.add_argument("--num-prompts", type=int, default=120, help="poisson/bursty requests")
    p.add_argument("--mixed-rate", type=float, default=0.8)
    p.add_argument("--mixed-prompts", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--compare", action="store_true",
                   help="simulate every measured run in --out and write the validation table")
    p.add_argument("--profile", type=Path, help="with --compare: the profile to simulate with")
    p.add_argument("--calibration", type=Path, default=None,
                   help="with --compare: the run whose concurrency-1 loads calibrate the "
                   "graph's overhead (default: --out)")
    p.add_argument("--no-cpu-model", dest="cpu_model", action="store_false",
                   help="with --compare: leave out the graph's CPU (engines on cores of their "
                   "own), to see what it explains")
    p.add_argument("--step-model", choices=STEP_MODELS, default="scaled",
                   help="with --compare: calibrate the served engine's steps as the profiled "
                   "ones times a factor (scaled), plus a constant (added), or take them as "
                   "profiled (profiled)")
    p.add_argument("--lengths-only", dest="prompts", action="store_false",
                   help="with --compare: replay lengths only (simulated prompts share no "
                   "tokens), not the prompts the runs sent")
    p.add_argument("--suffix", default="", help="with --compare: validation<suffix>.md/json")
    args = p.parse_args(argv)
    # The mixed benchmark's settings, for its configs and dataset.
    args.max_num_batched_tokens = mixed_bench.ENGINE["max_num_batched_tokens"]
    args.local_prefill_below_tokens = 256
    return args


#: Copies of its first request each load sends before it (vLLM's `--num-warmups`): the served
#: engines compute them too (`engine_work`).
NUM_WARMUPS = 2
#: The loads that send one request at a time (the others arrive open-loop).
MAX_CONCURRENCY = {"c1": 1, "c1-long": 1}

#: Each load draws its prompts with its own seed: vLLM's random dataset with one seed and one
#: length gives the same prompts, which a later load would find in the prefix cache (the
#: simulator replays lengths, not contents). With the `bench` model's 512-token vocabulary
#: about one prompt in ten still repeats one drawn before (a random offset into the vocabulary).
LOAD_SEEDS = {"c1": 1, "poisson": 2, "bursty": 3, "mixed": 4, "c1-long": 5}


def load_argv(load: str, system: systems.System, args: argparse.Namespace,
              dataset: Path) -> list[str]:
    base = dict(slo_ttft_ms=3000.0, num_warmups=NUM_WARMUPS,
                seed=args.seed * 10 + LOAD_SEEDS[load])
    if load == "c1":
        s = LoadSettings(num_prompts=24, input_len=512, output_len=32,
                         max_concurrency=MAX_CONCURRENCY[load], **base)
        extra = workloads.random_args(s)
    elif load == "c1-long":
        s = LoadSettings(num_prompts=12, input_len=64, output_len=256,
                         max_concurrency=MAX_CONCURRENCY[load], **base)
        extra = workloads.random_args(s)
    elif load in ("poisson", "bursty"):
        s = LoadSettings(num_prompts=args.num_prompts, input_len=512, output_len=64,
                         request_rate=args.rate, max_concurrency=None, **base)
        extra = workloads.random_args(s) + (["--burstiness", "0.25"] if load == "bursty"
                                            else [])
    else:
        s = LoadSettings(num_prompts=args.mixed_prompts, request_rate=args.mixed_rate,
                         max_concurrency=None, **base)
        extra = ["--dataset-name", "custom", "--dataset-path", str(dataset),
                 "--custom-output-len", "-1", "--skip-chat-template"]
    return workloads.common_args(s, system.base_url, system.model_name,
                                 system.model_dir) + extra


def measure(args: argparse.Namespace, argv: list[str] | None) -> None:
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    model_dir = systems.resolve_model_dir(args.model)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    dataset = out / "mixed_dataset.jsonl"
    mixed = argparse.Namespace(**vars(args), num_warmups=NUM_WARMUPS, long_prompt=1536,
                               long_prompt_output=16, short_prompt=64, long_decode_output=256)
    mixed.num_prompts = args.mixed_prompts
    mixed_bench.write_dataset(dataset, model_dir, mixed)
    built = [mixed_bench.build_system(n, args, model_dir, out) for n in names]
    unknown = sorted(set(args.loads) - set(LOADS))
    if unknown:
        raise SystemExit(f"unknown loads {unknown}; known: {', '.join(LOADS)}")
    for load in args.loads:
        workloads.parse_bench_args(load_argv(load, built[0], args, dataset))
    command = shlex.join(["python", "-m", "pdserve.benchmarks.sim_validation",
                          *(argv if argv is not None else sys.argv[1:])])
    meta = {**report.run_metadata(command, systems.REPO_ROOT), "run_name": out.name,
            "engine": mixed_bench.engine_of(args),
            "load": {k: getattr(args, k) for k in ("rate", "num_prompts", "mixed_rate",
                                                   "mixed_prompts", "seed")},
            "systems": {s.name: {"command": shlex.join(s.command), "env": s.env,
                                 "config": s.config_path and f"configs/{Path(s.config_path).name}"}
                        for s in built}}
    rows: list[dict[str, Any]] = []
    first = 1
    if args.more:
        rows, first = rounds.continue_report(out, meta)
    meta["rounds"] = first - 1 + args.rounds

    def write() -> None:
        rounds.write(out, meta, rows, COLUMNS, "colocated", measured_markdown(meta, rows))

    loads = {load: (lambda system, load=load: load_argv(load, system, args, dataset))
             for load in args.loads}
    preload = systems.find_preload_libs()
    for n in range(first, first + args.rounds):
        rounds.run_round(n, built, loads, out, meta, rows, preload, args.ready_timeout,
                         on_step=write)
    print((out / "report.md").read_text())


def measured_markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"# Simulator validation, measured side: {meta.get('run_name', '')}", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- commit: {meta.get('git_revision')}",
             f"- machine: {report.machine_line(meta['machine'])}",
             f"- engine (every engine): `{json.dumps(meta['engine'])}`",
             f"- loads: {json.dumps(meta['load'])}", f"- rounds: {meta.get('rounds')}", "",
             "## Systems", "", *rounds.system_lines(meta), "",
             *rounds.tables(rows, COLUMNS, "colocated")]
    return "\n".join(lines) + "\n"


# -- the comparison --------------------------------------------------------------------------
def compare(args: argparse.Namespace) -> None:
    from pdserve.simulation import calibration, profile_file
    from pdserve.simulation.serve_config import load_app, pick_model

    out = args.out
    profile = profile_file.load(args.profile)
    measured = json.loads((out / "report.json").read_text())
    table: list[dict[str, Any]] = []
    work: list[dict[str, Any]] = []  # engine_work's ratios, per system and load
    calibration_dir = args.calibration or out
    calibrating = json.loads((calibration_dir / "report.json").read_text())
    for system in measured["systems"]:
        model = pick_model(load_app(out / "configs" / f"{system}.yaml"), None)
        raws = {load: sorted((out / "raw").glob(f"{system}__{load}__r*.json"))
                for load in VALIDATION_LOADS}
        c1_rows = sorted((r for r in calibrating["results"]
                          if r["system"] == system and r["load"] in CALIBRATION_LOADS
                          and r.get("summary")), key=lambda r: (r["round"], r["load"]))
        runs = [calibration_dir / "raw" / f"{system}__{r['load']}__r{r['round']}.json"
                for r in c1_rows]
        cores = measured["machine"].get("cpu_affinity") or measured["machine"]["cpu_count"]
        overhead = calibration.graph_overhead(
            profile, model, runs, [r["cpu_s"] for r in c1_rows] if args.cpu_model else None,
            cores, steps=args.step_model,
            prompts=[sent_prompts(r["load"], calibrating, calibration_dir, model.model)
                     for r in c1_rows] if args.prompts else None)
        # The profile as `pdserve simulate` takes it for this system: measured engine plus the
        # served graph's calibrated overhead.
        profile.model_copy(update={"graph_overhead": overhead}).save(
            out / f"profile-{system}{args.suffix}.json")
        for load in VALIDATION_LOADS:
            prompts = sent_prompts(load, measured, out, model.model) if args.prompts else None
            runs = []
            for raw in raws[load]:
                real = json.loads(raw.read_text())
                runs.append((real, calibration.simulated(profile, model, raw, overhead,
                                                         prompts)))
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
    result = {"profile": str(args.profile), "calibration": str(args.calibration or out),
              "step_times": profile.step_times.model_dump(),
              "kv_transfer": profile.kv_transfer and profile.kv_transfer.model_dump(),
              "prompts": args.prompts, "rows": table, "engine_work": work,
              "window": {"profiled": profile.created, "calibration_runs": calibrating.get("date"),
                         "validated_runs": measured.get("date")}}
    (out / f"validation{args.suffix}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"validation{args.suffix}.md").write_text(validation_markdown(result, measured))
    plot_validation(result, out / f"validation{args.suffix}.png")
    print((out / f"validation{args.suffix}.md").read_text())


def engine_work(profile: Any, model: Any, overhead: Any, directory: Path,
                report_: dict[str, Any], system: str, load: str, prompts: bool) -> list[float]:
    """Per round of `load` in `directory`'s runs (`report_`: their report): the served engines'
    CPU seconds (process accounting) over those the simulated engines' steps held with steps as
    profiled (this overhead without its step scale or per-step time: on the host's shared cores
    unless `--no-cpu-model` left them out), each counting the `NUM_WARMUPS` warm-up requests
    every load here sends. Above 1, a served step did more work than its profile; a step model
    calibrated where it did more than under another load misjudges that load."""
    from pdserve.simulation import calibration

    bare_steps = overhead.model_copy(update={"step_scale": 1.0, "per_step_s": 0.0})
    sent = sent_prompts(load, report_, directory, model.model) if prompts else None
    ratios = []
    for row in report_["results"]:
        served = process_cpu.engine_core_cpu_s(row.get("cpu_s"))
        if row["system"] != system or row["load"] != load or not row.get("summary") \
                or not served:
            continue
        raw = directory / "raw" / f"{system}__{load}__r{row['round']}.json"
        held = calibration.engine_cpu_s(profile, model, raw, bare_steps, sent, NUM_WARMUPS,
                                        MAX_CONCURRENCY.get(load))
        if held:
            ratios.append(served / held)
    return ratios


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
             + "); graph overhead calibrated on the system's concurrency-1 runs in "
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
    if result.get("engine_work"):
        loads = [*CALIBRATION_LOADS, *VALIDATION_LOADS]
        lines += ["", "Served engines' CPU over the simulated steps' with steps as profiled "
                  "(process accounting; median (min–max) over rounds; calibration loads first):",
                  "", "| system | " + " | ".join(loads) + " |", "|---" * (len(loads) + 1) + "|"]
        cells = {(w["system"], w["load"]): f"{w['ratio']:.2f} ({w['low']:.2f}–{w['high']:.2f})"
                 for w in result["engine_work"]}
        for system in dict.fromkeys(w["system"] for w in result["engine_work"]):
            lines.append(f"| {system} | "
                         + " | ".join(cells.get((system, load), "—") for load in loads) + " |")
    lines += ["", "Graph overhead used (calibrated per system on its concurrency-1 runs):", ""]
    seen = set()
    for row in result["rows"]:
        if row["system"] not in seen:
            seen.add(row["system"])
            o = row["overhead"]
            lines.append(f"- {row['system']}: {o['per_request_s'] * 1e3:.1f} ms per request + "
                         f"{o['per_prompt_token_s'] * 1e3:.3f} ms per prompt token, "
                         f"engine steps ×{o['step_scale']:.2f} + {o['per_step_s'] * 1e3:.2f} ms, "
                         "graph CPU "
                         f"{o['cpu_per_request_s'] * 1e3:.0f} ms per request + "
                         f"{o['cpu_per_token_s'] * 1e3:.2f} ms per token + "
                         f"{o['background_cores']:.2f} cores at rest on "
                         f"{o['host_cores'] or '—'} cores")
    return "\n".join(lines) + "\n"


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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare:
        if args.profile is None:
            raise SystemExit("--compare needs --profile")
        compare(args)
    else:
        measure(args, argv)


if __name__ == "__main__":
    main()
