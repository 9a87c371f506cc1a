"""The simulator's validation: the same traces measured on the real graph and simulated.

    python -m pdserve.benchmarks.sim_validation --rounds 3 --out OUT
    python -m pdserve.benchmarks.sim_validation --compare --profile P --out OUT

Measuring runs the mixed benchmark's two systems (`pd`: one prefill and one decode engine;
`colocated`: two engines; `bench` model, one core per engine) under five loads (`--loads`),
systems interleaved per round:

- `c1`: concurrency 1, 512-token prompts, 32 out, and `c1-long`: concurrency 1, 64-token
  prompts, 256 out: calibrate the graph's overhead over the bare engine for the simulator
  (served step time, latency per request, the graph's CPU per request and per token); not
  validation points. `c4`: 4 at a time (closed loop), 512-token prompts, 64 out: its steps
  carry several tokens each, which tells the graph's CPU per engine step from its CPU per
  token (CPU only; runs without it calibrate as before). `--loads c1,c1-long,c4` runs only
  these (a calibration run of its own).
- `poisson`: open-loop Poisson arrivals, 512-token prompts, 64 out.
- `bursty`: the same lengths and mean rate, gamma inter-arrivals of shape 0.25 (vLLM's
  `--burstiness`: coefficient of variation 2).
- `mixed`: the mixed benchmark's workload (half 1536-token prompts with 16 out, half 64-token
  prompts with 256 out), Poisson.

Comparing (`sim_compare.py`, run by `--compare`) replays each measured run's own requests
(arrival times and lengths from vLLM's detailed result) through `pdserve simulate`'s graph
with the profile's step model, the system's serve config, and the overhead calibrated on the
same system's concurrency-1 runs
(`--calibration DIR`: those of another run). Per (system, load): measured median (min–max)
over rounds, simulated median, and the error of the simulated median against the measured
median, for TTFT and ITL p50/p90 (and ITL p99, requests/s).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from pdserve.benchmarks import mixed_bench, report, rounds, systems, workloads
from pdserve.benchmarks.workloads import LoadSettings
from pdserve.simulation.profile_file import DEFAULT_STEP_MODEL, PROMPT_COSTS, STEP_MODELS

SYSTEMS = ("pd", "colocated")
LOADS = ("c1", "c1-long", "c4", "poisson", "bursty", "mixed")
#: Loads the simulator is calibrated on (never compared): latency at concurrency 1, the
#: graph's CPU on all of them.
CONCURRENCY_1_LOADS = ("c1", "c1-long")
CPU_ONLY_LOADS = ("c4",)
CALIBRATION_LOADS = (*CONCURRENCY_1_LOADS, *CPU_ONLY_LOADS)
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
    p.add_argument("--step-model", choices=STEP_MODELS, default=DEFAULT_STEP_MODEL,
                   help="with --compare: calibrate the served engine's steps as the profiled "
                   "ones times a factor (scaled), plus a constant (added, the default), or take "
                   "them as profiled (profiled)")
    p.add_argument("--prompt-cost", choices=PROMPT_COSTS, default="engine",
                   help="with --compare: calibrate the TTFT the graph adds per prompt token as "
                   "the served engine's time per prompt token it computes (engine), or as "
                   "latency before the pools (graph, as calibrated until 2026-12-07)")
    p.add_argument("--busy-cores", action="store_true",
                   help="with --compare: put part of the graph's CPU on busy engine cores even "
                   "while idle ones are free, as much as the engines' run-queue wait at "
                   "concurrency 1 says (runs that recorded it)")
    p.add_argument("--concurrency-1-cpu", dest="load_cpu", action="store_false",
                   help="with --compare: split the graph's CPU on the concurrency-1 loads only "
                   "(per request and per token, as calibrated until 2026-12-07), not c4's")
    p.add_argument("--lengths-only", dest="prompts", action="store_false",
                   help="with --compare: replay lengths only (simulated prompts share no "
                   "tokens), not the prompts the runs sent")
    p.add_argument("--cpu-window", type=float, default=None, metavar="S",
                   help="with --compare: the graph's CPU demand follows the last S seconds' "
                   "arrivals and tokens (the profile's `graph_overhead.cpu_window_s`, 2 s by "
                   "default)")
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
MAX_CONCURRENCY = {"c1": 1, "c1-long": 1, "c4": 4}

#: Each load draws its prompts with its own seed: vLLM's random dataset with one seed and one
#: length gives the same prompts, which a later load would find in the prefix cache (the
#: simulator replays lengths, not contents). With the `bench` model's 512-token vocabulary
#: about one prompt in ten still repeats one drawn before (a random offset into the vocabulary).
LOAD_SEEDS = {"c1": 1, "poisson": 2, "bursty": 3, "mixed": 4, "c1-long": 5, "c4": 6}


def load_argv(load: str, system: systems.System, args: argparse.Namespace,
              dataset: Path) -> list[str]:
    base = dict(slo_ttft_ms=3000.0, num_warmups=NUM_WARMUPS,
                seed=args.seed * 10 + LOAD_SEEDS[load])
    if load == "c1":
        s = LoadSettings(num_prompts=24, input_len=512, output_len=32,
                         max_concurrency=MAX_CONCURRENCY[load], **base)
        extra = workloads.random_args(s)
    elif load == "c4":
        s = LoadSettings(num_prompts=32, input_len=512, output_len=64,
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
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare:
        if args.profile is None:
            raise SystemExit("--compare needs --profile")
        from pdserve.benchmarks.sim_compare import compare

        compare(args)
    else:
        measure(args, argv)


if __name__ == "__main__":
    main()
