"""The mixed benchmark's two systems simulated over a range of rates: where PD's ITL p99 should
pull away from colocated's, before measuring it.

    python -m pdserve.benchmarks.mixed_sim_scan --rates 1,1.5,2,2.25,2.5 \
        --pd-profile benchmarks/results/sim-calibration-cpu-v2/profile-pd.json \
        --colocated-profile benchmarks/results/sim-calibration-cpu-v2/profile-colocated.json \
        --out benchmarks/results/mixed-cpu-v4

A colocated engine stalls its running decodes for a long prompt's prefill step (one long gap
each); PD's decode engine never prefills a long prompt. The p99 of all gaps sees those stalls
only once they are more than 1 % of the gaps, and their share is about the long prompts
arriving per colocated engine per second times a common gap: with this box's 16-24 ms gaps,
some 0.4-0.6 long prompts per second per engine, 1.7-2.5 requests/s of the half-and-half mix
on two engines. The scan simulates `mixed_bench`'s `pd` (1 prefill + 1 decode engine) and
`colocated` (2 engines) on its workload (its workload arguments, `add_workload_arguments`;
Poisson arrivals, several seeds) with each system's calibrated profile, and reports per rate
the medians of ITL p99, the share of gaps over the ITL SLO, goodput and TTFT.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from pdserve.benchmarks import mixed_bench, report, systems
from pdserve.deployments.config.app import AppConfig
from pdserve.simulation.profile_file import Profile
from pdserve.simulation.traces import TraceRequest

#: The two systems: their replicas per pool, as the simulator takes them.
SYSTEMS: dict[str, dict[str, int]] = {"colocated": {"colocated": 2},
                                      "pd": {"prefill": 1, "decode": 1}}


def one_run(profile: Profile, app: AppConfig, replicas: dict[str, int], trace: list[TraceRequest],
            slo_ttft_ms: float, slo_itl_ms: float, seed: int) -> dict[str, float]:
    """One simulated run: ITL p99, share of gaps over the ITL SLO (%), goodput, TTFT p50/p99."""
    from pdserve.simulation.graph import Simulation
    from pdserve.simulation.metrics import summarize
    from pdserve.simulation.serve_config import pick_model

    sim = Simulation(profile, pick_model(app, None), trace, seed=seed, replicas=replicas,
                     app=app)
    outcomes = sim.run()
    summary = summarize(outcomes, slo_ttft_ms, slo_itl_ms)
    gaps = [g for o in outcomes if o.done for g in o.itls_s]
    over = 100 * sum(1 for g in gaps if g * 1e3 > slo_itl_ms) / len(gaps) if gaps else 0.0
    return {"p99_itl_ms": summary["p99_itl_ms"], "gaps_over_slo_pct": over,
            "slo_goodput": summary["slo_goodput"], "p50_ttft_ms": summary["p50_ttft_ms"],
            "p99_ttft_ms": summary["p99_ttft_ms"]}


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's median over the seeds' runs."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def itl_ratio(pd: list[dict[str, float]], colocated: list[dict[str, float]]) -> float:
    """PD's ITL p99 over colocated's, median of same-seed ratios (as the benchmark pairs
    same-round runs)."""
    return statistics.median(p["p99_itl_ms"] / c["p99_itl_ms"]
                             for p, c in zip(pd, colocated, strict=True))


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = ["# Mixed workload, simulated: PD vs colocated by rate", "",
             f"- command: `{meta['command']}`",
             f"- date: {meta['date']}; commit: {meta['git_revision']}",
             f"- engine (every engine): `{json.dumps(meta['engine'])}`",
             f"- profiles: pd `{meta['pd_profile']}`, colocated `{meta['colocated_profile']}`",
             f"- load: {meta['num_prompts']} requests per run, Poisson, half long prompts "
             f"({meta['long_prompt']} tokens, {meta['long_prompt_output']} out), half long "
             f"decodes ({meta['short_prompt']} tokens, {meta['long_decode_output']} out); "
             f"seeds {meta['seeds']} (medians)",
             f"- SLO: TTFT ≤ {meta['slo_ttft_ms']:g} ms and every gap ≤ {meta['slo_itl_ms']:g} ms",
             "", "| rate req/s | system | ITL p99 ms | gaps over the ITL SLO % | goodput req/s "
             "| TTFT p50 ms | TTFT p99 ms | PD / colocated ITL p99 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for name in SYSTEMS:
            m = row[name]
            ratio = f"{row['itl_p99_ratio']:.2f}×" if name == "pd" else ""
            lines.append(f"| {row['rate']:g} | {name} | {m['p99_itl_ms']:.0f} | "
                         f"{m['gaps_over_slo_pct']:.2f} | {m['slo_goodput']:.2f} | "
                         f"{m['p50_ttft_ms']:.0f} | {m['p99_ttft_ms']:.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from pdserve.simulation import profile_file
    from pdserve.simulation.traces import mixed_lengths, poisson

    p = argparse.ArgumentParser(prog="python -m pdserve.benchmarks.mixed_sim_scan",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", required=True, help="comma-separated requests/s")
    p.add_argument("--pd-profile", type=Path, required=True)
    p.add_argument("--colocated-profile", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    mixed_bench.add_workload_arguments(p)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    mixed_bench.check_workload(args)
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    engine = mixed_bench.engine_of(args)
    docs = {"pd": mixed_bench.pd_config(args.model, args.local_prefill_below_tokens, engine),
            "colocated": mixed_bench.colocated_config(args.model, engine)}
    apps = {n: AppConfig.model_validate(d["applications"][0]["args"]) for n, d in docs.items()}
    profiles = {"pd": profile_file.load(args.pd_profile),
                "colocated": profile_file.load(args.colocated_profile)}
    lengths = mixed_lengths(args.long_prompt, args.long_prompt_output, args.short_prompt,
                            args.long_decode_output)
    rows = []
    for rate in rates:
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in SYSTEMS}
        for seed in seeds:
            trace = poisson(rate, args.num_prompts, lengths, seed=seed)
            for name, replicas in SYSTEMS.items():
                runs[name].append(one_run(profiles[name], apps[name], replicas, trace,
                                          args.slo_ttft_ms, args.slo_itl_ms, seed))
        rows.append({"rate": rate, **{n: medians(r) for n, r in runs.items()},
                     "itl_p99_ratio": itl_ratio(runs["pd"], runs["colocated"]), "runs": runs})
        print(f"rate {rate:g}: PD / colocated ITL p99 {rows[-1]['itl_p99_ratio']:.2f}×",
              file=sys.stderr, flush=True)
    command = shlex.join(["python", "-m", "pdserve.benchmarks.mixed_sim_scan",
                          *(argv if argv is not None else sys.argv[1:])])
    meta = {**report.run_metadata(command, systems.REPO_ROOT), "seeds": seeds, "engine": engine,
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
               if k != "seeds"}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sim-scan.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1)
                                            + "\n")
    (args.out / "sim-scan.md").write_text(markdown(meta, rows))


if __name__ == "__main__":
    main()
