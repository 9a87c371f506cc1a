"""Validate `pdserve plan` on this machine: serve each candidate of a plan as the config the
planner writes for it, send it the plan's load with vLLM's serving benchmark, and compare.

    python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v1 \
        --rounds 3 --out benchmarks/results/plan-validation-cpu-v1
    python -m pdserve.benchmarks.plan_validation --plan ... --out ... --compare

Measured per candidate and round: SLO attainment and goodput under the plan's SLO (TTFT, and
every gap between tokens, from vLLM's detailed per-request results). Compared: each measured
run's own requests (arrivals, lengths, the prompts it sent) through the simulated graph with
the plan's profile and the candidate's replicas; the recommendation's measured goodput against
the best measured candidate's. Like every benchmark here, ratios and errors, no timed asserts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from pdserve.benchmarks import process_cpu, report, rounds, systems, workloads
from pdserve.benchmarks.workloads import LoadSettings

LOAD = "plan"


def slug(evaluation: dict[str, Any]) -> str:
    """A candidate's system name: `colocated-2`, `pd-1-2`."""
    replicas = evaluation["replicas"]
    if evaluation["mode"] == "colocated":
        return f"colocated-{replicas['colocated']}"
    return f"pd-{replicas['prefill']}-{replicas['decode']}"


def attainment(result: dict[str, Any], ttft_ms: float, itl_ms: float) -> tuple[float, float]:
    """(% of requests within the SLO, such requests per second) of a vLLM detailed result:
    TTFT within `ttft_ms` and every gap between tokens within `itl_ms`; failed ones miss."""
    ttfts, itls = result.get("ttfts") or [], result.get("itls") or []
    errors = result.get("errors") or [""] * len(ttfts)
    met = sum(1 for t, gaps, e in zip(ttfts, itls, errors, strict=False)
              if not e and t * 1e3 <= ttft_ms and all(g * 1e3 <= itl_ms for g in gaps))
    total = len(ttfts)
    duration = result.get("duration") or 0.0
    return (100.0 * met / total if total else 0.0), (met / duration if duration else 0.0)


def misses(ttfts: list[float | None], gaps: list[list[float]], ttft_ms: float,
           itl_ms: float, errors: list[str] | None = None) -> tuple[int, int]:
    """(requests whose TTFT missed `ttft_ms`, requests with a gap over `itl_ms`): why requests
    missed the SLO (one can miss both; a failed request, or one without a first token, misses
    its TTFT)."""
    errors = errors or [""] * len(ttfts)
    late = sum(1 for t, e in zip(ttfts, errors, strict=False)
               if e or t is None or t * 1e3 > ttft_ms)
    gappy = sum(1 for g in gaps if any(x * 1e3 > itl_ms for x in g))
    return late, gappy


def load_settings(plan: dict[str, Any], args: argparse.Namespace) -> LoadSettings:
    w = plan["workload"]
    return LoadSettings(num_prompts=args.num_prompts or plan["requests"],
                        input_len=round(w["prompt"]), output_len=round(w["output"]),
                        request_rate=w["rate"], max_concurrency=None,
                        slo_ttft_ms=plan["slo"]["ttft_ms"], num_warmups=2, seed=args.seed)


def bench_argv(plan: dict[str, Any], args: argparse.Namespace, system: Any) -> list[str]:
    s = load_settings(plan, args)
    return (workloads.common_args(s, system.base_url, system.model_name, system.model_dir)
            + workloads.random_args(s))


def chosen(plan: dict[str, Any], labels: str | None, max_engines: int) -> list[dict[str, Any]]:
    wanted = {x.strip() for x in labels.split(",")} if labels else None
    return [e for e in plan["evaluations"]
            if (wanted is None or slug(e) in wanted) and e["engines"] <= max_engines]


def fit_to_cpus(doc: dict[str, Any], path: Path, cpus: float | None = None) -> dict[str, Any]:
    """Ray places every engine of the candidate on this box: each pool's `num_cpus` lowered to
    the box's CPUs over the app's engines at their maximum (engines beyond the cores share
    them, as the simulation models); rewritten to `path`, checked as the app build checks."""
    from pdserve.deployments.config.app import AppConfig, check_cpu_budget
    from pdserve.simulation.planner import _PlainDumper

    cpus = float(cpus or os.cpu_count() or 1)
    args = doc["applications"][0]["args"]
    app = AppConfig.model_validate(args)
    engines = sum(p.max_replicas() for m in app.models for p in m.pools().values())
    each = math.floor(100 * cpus / max(1, engines)) / 100
    for entry, config in zip(args["models"], app.models, strict=True):
        for role, pool in config.pools().items():
            options = entry.setdefault(role, {}).setdefault("ray_actor_options", {})
            options["num_cpus"] = min(pool.cpus_per_replica(), each)
    check_cpu_budget(AppConfig.model_validate(args), cpus)
    path.write_text(yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False))
    return doc


def measure(args: argparse.Namespace, argv: list[str] | None) -> None:
    from pdserve.deployments.config.ray_serve_env import ray_start_env
    from pdserve.simulation.planner import Candidate, write_config
    from pdserve.simulation.serve_config import load_app, pick_model

    plan = json.loads((args.plan / "plan.json").read_text())
    source = Path(plan["config"])
    model = pick_model(load_app(source), plan["model"])
    model_dir = systems.resolve_model_dir(model.model)
    out = args.out
    built = []
    for e in chosen(plan, args.candidates, args.max_engines):
        r = e["replicas"]
        candidate = Candidate(e["mode"], r.get("prefill", r.get("colocated")),
                              r.get("decode", r.get("colocated")))
        path = out / "configs" / f"{slug(e)}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = fit_to_cpus(write_config(source, model.model_id, candidate, path), path)
        built.append(systems.serve_run_system(slug(e), doc, path, model_dir, model.model_id,
                                              model.engine_kwargs, ray_start_env()))
    if not built:
        raise SystemExit("no candidate of the plan selected")
    command = shlex.join(["python", "-m", "pdserve.benchmarks.plan_validation",
                          *(argv if argv is not None else sys.argv[1:])])
    meta = {**report.run_metadata(command, systems.REPO_ROOT), "run_name": out.name,
            "plan": str(args.plan), "load": vars(load_settings(plan, args)),
            "systems": {s.name: {"command": shlex.join(s.command), "env": s.env,
                                 "config": f"configs/{s.name}.yaml"} for s in built}}
    rows: list[dict[str, Any]] = []
    meta["rounds"] = args.rounds
    loads = {LOAD: lambda system: bench_argv(plan, args, system)}
    preload = systems.find_preload_libs()
    for n in range(1, args.rounds + 1):
        rounds.run_round(n, built, loads, out, meta, rows, preload, args.ready_timeout,
                         on_step=lambda: (out / "report.json").write_text(json.dumps(
                             {**meta, "results": rows}, indent=1, default=str) + "\n"))
    compare(args)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Measured attainment and goodput per candidate (median, min–max over rounds) beside the
    simulation of the same runs' requests; writes validation.{json,md}."""
    from pdserve.simulation import profile_file, traces
    from pdserve.simulation.graph import Simulation
    from pdserve.simulation.metrics import summarize
    from pdserve.simulation.planner import as_mode
    from pdserve.simulation.serve_config import load_app, pick_model

    plan = json.loads((args.plan / "plan.json").read_text())
    measured = json.loads((args.out / "report.json").read_text())
    profile_path = args.profile or Path(plan["profile"])
    profile = profile_file.load(profile_path)
    profile = profile.model_copy(update={
        "graph_overhead": profile.graph_overhead.with_cpu_window(args.cpu_window)})
    app = load_app(Path(plan["config"]))
    model = pick_model(app, plan["model"])
    ttft_ms, itl_ms = plan["slo"]["ttft_ms"], plan["slo"]["itl_ms"]
    model_dir = systems.resolve_model_dir(model.model)
    # Every candidate was sent the same prompts: sample them again once, as the runs did.
    target = argparse.Namespace(base_url="http://127.0.0.1:1", model_name="replay",
                                model_dir=str(model_dir))
    prompts = traces.read_vllm_dataset(
        shlex.join(bench_argv(plan, argparse.Namespace(**{
            "num_prompts": measured["load"]["num_prompts"],
            "seed": measured["load"]["seed"]}), target)), str(model_dir))
    engine_cpu = {(r["system"], r["round"]): process_cpu.engine_core_cpu_s(r.get("cpu_s"))
                  for r in measured.get("results", []) if r.get("load") == LOAD}
    rows = []
    for e in chosen(plan, args.candidates, args.max_engines):
        name = slug(e)
        raws = sorted((args.out / "raw").glob(f"{name}__{LOAD}__r*.json"))
        if not raws:
            continue
        real, simulated, real_misses, sim_misses, cpu = [], [], [], [], []
        for raw in raws:
            result = json.loads(raw.read_text())
            real.append(attainment(result, ttft_ms, itl_ms))
            real_misses.append(misses(result.get("ttfts") or [], result.get("itls") or [],
                                      ttft_ms, itl_ms,
                                      result.get("errors")))
            sim = Simulation(profile, as_mode(model, e["mode"]),
                             traces.read_vllm_result(raw, prompts=prompts),
                             replicas=e["replicas"], app=app)
            outcomes = sim.run()
            cpu.append((engine_cpu.get((name, round_of(raw))), sim.cpu.engine_cpu_s))
            s = summarize(outcomes, ttft_ms, itl_ms)
            simulated.append((s["slo_met_pct"] or 0.0, s["slo_goodput"] or 0.0))
            sim_misses.append(misses([o.ttft_s for o in outcomes],
                                     [o.itls_s for o in outcomes], ttft_ms, itl_ms))
        row = {"candidate": e["label"], "system": name, "engines": e["engines"],
               "rounds": len(raws)}
        for i, key in enumerate(("attainment_pct", "goodput")):
            values = [r[i] for r in real]
            m, s = statistics.median(values), statistics.median(x[i] for x in simulated)
            row[key] = {"measured": m, "low": min(values), "high": max(values),
                        "simulated": s, "error_pct": 100 * (s - m) / m if m else None}
        pairs = [(m, s) for m, s in cpu if m and s]
        if pairs:
            row["engine_cpu_s"] = {"measured": statistics.median(m for m, _ in pairs),
                                   "simulated": statistics.median(s for _, s in pairs),
                                   "ratio": statistics.median(m / s for m, s in pairs)}
        row["misses"] = {key: {"measured": statistics.median(x[i] for x in real_misses),
                               "simulated": statistics.median(x[i] for x in sim_misses)}
                         for i, key in enumerate(("ttft", "gap"))}
        rows.append(row)
    recommended = plan["recommended"] and plan["recommended"]["label"]
    best = max(rows, key=lambda r: r["goodput"]["measured"], default=None)
    mine = next((r for r in rows if r["candidate"] == recommended), None)
    result = {"plan": str(args.plan), "slo": plan["slo"],
              "simulated_at": report.git_revision(systems.REPO_ROOT),
              "profile": str(profile_path),
              "profile_cpu": profile.machine.get("cpu_model"),
              "cpu_window_s": profile.graph_overhead.cpu_window_s,
              "measured_cpu": (measured.get("machine") or {}).get("cpu_model"),
              "recommended": recommended,
              "best_measured": best and best["candidate"],
              "recommended_vs_best_goodput": (mine["goodput"]["measured"]
                                              / best["goodput"]["measured"]
                                              if mine and best and best["goodput"]["measured"]
                                              else None),
              "rows": rows}
    name = args.report_name
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result, measured))
    print((args.out / f"{name}.md").read_text())
    return result


def round_of(raw: Path) -> int:
    """The round a raw result file (`{system}__{load}__r{n}.json`) was measured in."""
    return int(raw.stem.rsplit("__r", 1)[1])


def markdown(result: dict[str, Any], measured: dict[str, Any]) -> str:
    lines = [f"# Plan validation: {measured.get('run_name', '')}", "",
             f"- measured: `{measured.get('command')}` at {measured.get('git_revision')}, "
             f"{measured.get('rounds')} rounds",
             f"- simulated at {result.get('simulated_at')} (`--compare`)",
             *profile_lines(result),
             f"- plan: `{result['plan']}`, SLO "
             f"{json.dumps(result['slo'])}",
             f"- recommended: {result['recommended']}; best measured goodput: "
             f"{result['best_measured']}; recommended / best: "
             + ("—" if result["recommended_vs_best_goodput"] is None
                else f"{result['recommended_vs_best_goodput']:.2f}"), "",
             "| candidate | engines | SLO met % measured | simulated | goodput req/s measured |"
             " simulated | error |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        a, g = r["attainment_pct"], r["goodput"]
        error = "—" if g["error_pct"] is None else f"{g['error_pct']:+.0f} %"
        lines.append(f"| {r['candidate']} | {r['engines']} | {a['measured']:.1f} "
                     f"({a['low']:.1f}–{a['high']:.1f}) | {a['simulated']:.1f} | "
                     f"{g['measured']:.2f} ({g['low']:.2f}–{g['high']:.2f}) | "
                     f"{g['simulated']:.2f} | {error} |")
    if all("misses" in r for r in result["rows"]):
        lines += ["", "Why requests missed (median requests per run; one can miss both):", "",
                  "| candidate | TTFT over target, measured | simulated | a gap over target, "
                  "measured | simulated |", "|---|---|---|---|---|"]
        for r in result["rows"]:
            t, g = r["misses"]["ttft"], r["misses"]["gap"]
            lines.append(f"| {r['candidate']} | {t['measured']:g} | {t['simulated']:g} | "
                         f"{g['measured']:g} | {g['simulated']:g} |")
    if result["rows"] and all("engine_cpu_s" in r for r in result["rows"]):
        lines += ["", "CPU the engines used (median seconds per run; measured: the vLLM engine "
                  "core processes' user + system time; simulated: the cores their steps held):",
                  "",
                  "| candidate | measured | simulated | measured / simulated |",
                  "|---|---|---|---|"]
        for r in result["rows"]:
            c = r["engine_cpu_s"]
            lines.append(f"| {r['candidate']} | {c['measured']:.1f} | {c['simulated']:.1f} | "
                         f"{c['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def profile_lines(result: dict[str, Any]) -> list[str]:
    """Which profile simulated the runs, and a warning when it was measured on another CPU than
    the runs were: a profile's step times hold for the machine that measured them only."""
    if "profile" not in result:
        return []
    ran, profiled = result.get("measured_cpu"), result.get("profile_cpu")
    line = f"- profile: `{result['profile']}`, measured on {profiled or 'an unrecorded CPU'}"
    if result.get("cpu_window_s") is not None:
        line += f"; graph CPU demand over the last {result['cpu_window_s']:g} s"
    if not (ran and profiled):
        return [line, "- the profile's or the runs' CPU is not recorded: whether the profile "
                "holds for the runs' machine cannot be checked"]
    if ran != profiled:
        return [line, f"- **the runs were measured on another CPU ({ran}): the simulation "
                "predicts the profile's machine, not this one; profile this one "
                "(`pdserve profile`) and compare again with `--profile`**"]
    return [line + " (the runs' CPU model too; a VM's model name may hide a different host)"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pdserve.benchmarks.plan_validation",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", type=Path, required=True, help="a `pdserve plan --out` folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--candidates", default=None,
                   help="systems to measure, e.g. colocated-1,pd-1-1 (default: every one "
                   "the plan simulated, up to --max-engines)")
    p.add_argument("--max-engines", type=int, default=3)
    p.add_argument("--num-prompts", type=int, default=None,
                   help="requests per run (default: the plan's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--compare", action="store_true", help="compare the runs in --out only")
    p.add_argument("--profile", type=Path, default=None,
                   help="simulate with this profile instead of the plan's (one measured on "
                   "the machine the runs were measured on); the comparison after measuring "
                   "uses it too")
    p.add_argument("--cpu-window", type=float, default=None, metavar="S",
                   help="simulate with the graph's CPU demand following the last S seconds' "
                   "arrivals and tokens (default: the profile's `graph_overhead.cpu_window_s`)")
    p.add_argument("--report-name", default="validation",
                   help="the comparison's file names in --out (NAME.json, NAME.md): keep "
                   "comparisons with other profiles side by side")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare:
        compare(args)
    else:
        measure(args, argv)


if __name__ == "__main__":
    main()
