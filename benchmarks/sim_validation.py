"""The simulator's validation: the same traces measured on the real graph and simulated.

    python -m pdserve.benchmarks.sim_validation --rounds 3 --out OUT
    python -m pdserve.benchmarks.sim_validation --compare --profile P --out OUT

Measuring runs the mixed benchmark's two systems (`pd`: one prefill and one decode engine;
`colocated`: two engines; `bench` model, one core per engine) under four loads, systems
interleaved per round:

- `c1`: concurrency 1, 512-token prompts, 32 out: calibrates the graph's overhead over the
  bare engine (per request, per streamed token) for the simulator; not a validation point.
- `poisson`: open-loop Poisson arrivals, 512-token prompts, 64 out.
- `bursty`: the same lengths and mean rate, gamma inter-arrivals of shape 0.25 (vLLM's
  `--burstiness`: coefficient of variation 2).
- `mixed`: the mixed benchmark's workload (half 1536-token prompts with 16 out, half 64-token
  prompts with 256 out), Poisson.

Comparing replays each measured run's own requests (arrival times and lengths from vLLM's
detailed result) through `pdserve simulate`'s graph with the profile's step model, the
system's serve config, and the overhead calibrated on the same system's `c1` runs (median
over rounds). Per (system, load): measured median (min–max) over rounds, simulated median,
and the error of the simulated median against the measured median, for TTFT and ITL p50/p90.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from pdserve.benchmarks import mixed_bench, report, rounds, systems, workloads
from pdserve.benchmarks.workloads import LoadSettings

SYSTEMS = ("pd", "colocated")
LOADS = ("c1", "poisson", "bursty", "mixed")
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
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--more", action="store_true", help="add rounds to the report in --out")
    p.add_argument("--systems", default=",".join(SYSTEMS))
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
    args = p.parse_args(argv)
    # The mixed benchmark's settings, for its configs and dataset.
    args.max_num_batched_tokens = mixed_bench.ENGINE["max_num_batched_tokens"]
    args.local_prefill_below_tokens = 256
    args.num_prompts_mixed = args.mixed_prompts
    return args


def load_argv(load: str, system: systems.System, args: argparse.Namespace,
              dataset: Path) -> list[str]:
    base = dict(slo_ttft_ms=3000.0, num_warmups=2, seed=args.seed)
    if load == "c1":
        s = LoadSettings(num_prompts=24, input_len=512, output_len=32, max_concurrency=1,
                         **base)
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
    mixed = argparse.Namespace(**vars(args), num_warmups=2, long_prompt=1536,
                               long_prompt_output=16, short_prompt=64, long_decode_output=256)
    mixed.num_prompts = args.mixed_prompts
    mixed_bench.write_dataset(dataset, model_dir, mixed)
    built = [mixed_bench.build_system(n, args, model_dir, out) for n in names]
    for load in LOADS:
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
             for load in LOADS}
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
def simulate_run(profile: Any, model: Any, raw: Path, overhead: Any | None = None
                 ) -> dict[str, Any]:
    from pdserve.simulation import traces
    from pdserve.simulation.graph import Simulation
    from pdserve.simulation.metrics import summarize

    if overhead is not None:
        profile = profile.model_copy(update={"graph_overhead": overhead})
    sim = Simulation(profile, model, traces.read(raw))
    return summarize(sim.run(), replica_seconds=sim.replica_seconds())


def calibrate(profile: Any, model: Any, c1_runs: list[Path]) -> Any:
    """The graph's overhead over the simulated bare engine at concurrency 1: measured TTFT
    p50 minus simulated (per request), measured TPOT p50 minus simulated (per token), median
    over the runs."""
    from pdserve.simulation.profile_file import GraphOverhead

    per_request, per_token = [], []
    for raw in c1_runs:
        measured = json.loads(raw.read_text())
        simulated = simulate_run(profile, model, raw, GraphOverhead())
        per_request.append((measured["p50_ttft_ms"] - simulated["p50_ttft_ms"]) / 1e3)
        per_token.append((measured["p50_tpot_ms"] - simulated["p50_tpot_ms"]) / 1e3)
    return GraphOverhead(per_request_s=max(0.0, statistics.median(per_request)),
                         per_token_s=max(0.0, statistics.median(per_token)),
                         source=f"concurrency-1 runs ({len(c1_runs)}): measured minus "
                         "simulated bare engine, TTFT p50 and TPOT p50, median")


def compare(args: argparse.Namespace) -> None:
    from pdserve.simulation import profile_file
    from pdserve.simulation.serve_config import load_app, pick_model

    out = args.out
    profile = profile_file.load(args.profile)
    measured = json.loads((out / "report.json").read_text())
    table: list[dict[str, Any]] = []
    for system in measured["systems"]:
        model = pick_model(load_app(out / "configs" / f"{system}.yaml"), None)
        raws = {load: sorted((out / "raw").glob(f"{system}__{load}__r*.json"))
                for load in LOADS}
        overhead = calibrate(profile, model, raws["c1"])
        for load in LOADS[1:]:
            runs = []
            for raw in raws[load]:
                real = json.loads(raw.read_text())
                runs.append((real, simulate_run(profile, model, raw, overhead)))
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
    result = {"profile": str(args.profile), "step_times": profile.step_times.model_dump(),
              "kv_transfer": profile.kv_transfer and profile.kv_transfer.model_dump(),
              "rows": table}
    (out / "validation.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "validation.md").write_text(validation_markdown(result, measured))
    print((out / "validation.md").read_text())


def validation_markdown(result: dict[str, Any], measured: dict[str, Any]) -> str:
    steps = result["step_times"]
    lines = [f"# Simulator validation: {measured.get('run_name', '')}", "",
             f"- measured: `{measured['command']}` at {measured.get('git_revision')}, "
             f"{measured.get('rounds')} rounds",
             f"- profile: `{result['profile']}` (step model held-out error "
             f"{steps.get('heldout_mape', 0):.1f}% MAPE, "
             f"p90 {steps.get('heldout_p90_ape', 0):.1f}%)",
             "- simulated: each measured run's own requests (arrivals, lengths) replayed; graph "
             "overhead calibrated on the system's concurrency-1 runs", "",
             "Measured: median (min–max) over rounds; simulated: median over the same rounds' "
             "traces; error: simulated median vs measured median.", "",
             "| system | load | metric | measured | simulated | error |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for key in (*COMPARED, "p99_itl_ms", "request_throughput"):
            cell = row[key]
            lines.append(f"| {row['system']} | {row['load']} | {key} | {cell['measured']:.1f} "
                         f"({cell['low']:.1f}–{cell['high']:.1f}) | {cell['simulated']:.1f} | "
                         f"{cell['error_pct']:+.1f}% |")
    lines += ["", "Graph overhead used (calibrated per system on `c1`):", ""]
    seen = set()
    for row in result["rows"]:
        if row["system"] not in seen:
            seen.add(row["system"])
            o = row["overhead"]
            lines.append(f"- {row['system']}: {o['per_request_s'] * 1e3:.1f} ms per request, "
                         f"{o['per_token_s'] * 1e3:.2f} ms per streamed token")
    return "\n".join(lines) + "\n"


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
