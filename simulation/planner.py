"""`pdserve plan`: how many engines of which kind a model needs to hold a trace to an SLO.

Candidates are colocated (n engines) and PD (p prefill + d decode engines) within a budget of
engines. Each is first estimated in closed form from the profile (`estimates.py`), which
prunes what cannot hold the load and keeps the few smallest of each kind that can; those are
simulated
(the whole graph, `graph.Simulation`, fixed replica counts) on the trace, optionally with a
rate search (the largest rate scale whose SLO attainment still meets the target). The smallest
candidate that meets the target is recommended and written as a ready-to-run serve config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pdserve.simulation.estimates import (
    Candidate,
    Estimate,
    Workload,
    candidates,
    estimate,
    prune,
)
from pdserve.simulation.graph import Simulation
from pdserve.simulation.metrics import summarize
from pdserve.simulation.profile_file import Profile
from pdserve.simulation.traces import TraceRequest


@dataclass
class Evaluation:
    candidate: Candidate
    estimate: Estimate
    summary: dict[str, Any] = field(default_factory=dict)
    max_rate_scale: float | None = None  # with a rate search

    @property
    def attainment(self) -> float:
        return float(self.summary.get("slo_met_pct") or 0.0)

    @property
    def goodput(self) -> float:
        return float(self.summary.get("slo_goodput") or 0.0)


def simulate(profile: Profile, model: Any, trace: list[TraceRequest], candidate: Candidate,
             ttft_ms: float, itl_ms: float, seed: int,
             app: Any = None) -> dict[str, Any]:
    """The candidate's graph over the trace, fixed replica counts (`app`: the model's, which
    places engines on a CPU host's cores)."""
    sim = Simulation(profile, as_mode(model, candidate.mode), trace, seed=seed,
                     replicas=candidate.replicas, app=app)
    return summarize(sim.run(), ttft_ms, itl_ms, sim.replica_seconds())


def scaled(trace: list[TraceRequest], factor: float) -> list[TraceRequest]:
    """The trace `factor` times as fast (arrivals closer together)."""
    return [replace(r, arrival_s=r.arrival_s / factor) for r in trace]


def max_rate_scale(profile: Profile, model: Any, trace: list[TraceRequest],
                   candidate: Candidate, ttft_ms: float, itl_ms: float, attainment: float,
                   seed: int, steps: int = 6, app: Any = None) -> float:
    """The largest factor (bisected between 1/8 and 8) by which the trace can be sped up and
    still meet `attainment` % of requests within the SLO."""
    def ok(factor: float) -> bool:
        summary = simulate(profile, model, scaled(trace, factor), candidate, ttft_ms, itl_ms,
                           seed, app)
        return (summary.get("slo_met_pct") or 0.0) >= attainment

    low, high = 0.125, 8.0
    if not ok(low):
        return 0.0
    if ok(high):
        return high
    for _ in range(steps):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if ok(middle) else (low, middle)
    return low


def as_mode(model: Any, mode: str) -> Any:
    """The model served in `mode`, its pools' settings carried over (a PD model's decode pool
    becomes the colocated pool and serves as both pools the other way round)."""
    if model.mode == mode:
        return model
    data = model.model_dump(exclude_unset=True)
    pools = {role: data.pop(role, None) for role in ("prefill", "decode", "colocated")}
    if mode == "colocated":
        data["colocated"] = pools["decode"] or pools["prefill"] or {}
    else:
        data["prefill"] = pools["colocated"] or {}
        data["decode"] = pools["colocated"] or {}
    data["mode"] = mode
    return type(model).model_validate(data)


def recommend(evaluations: list[Evaluation], attainment: float) -> Evaluation | None:
    """The fewest engines meeting the attainment target (ties: the higher goodput)."""
    meeting = [e for e in evaluations if e.attainment >= attainment]
    if not meeting:
        return None
    return min(meeting, key=lambda e: (e.candidate.engines, -e.goodput))


def frontier(evaluations: list[Evaluation]) -> list[Evaluation]:
    """Candidates no other matches on both goodput per engine and SLO attainment while beating
    them on one (the Pareto front)."""
    def per_engine(e: Evaluation) -> float:
        return e.goodput / e.candidate.engines

    return sorted((e for e in evaluations
                   if not any(per_engine(o) >= per_engine(e) and o.attainment >= e.attainment
                              and (per_engine(o), o.attainment) != (per_engine(e), e.attainment)
                              for o in evaluations)),
                  key=lambda e: -per_engine(e))


def write_config(source: Path, model_id: str, candidate: Candidate, out: Path,
                 application: int = 0) -> dict[str, Any]:
    """The source serve config with the model served as `candidate` says: fixed pools get
    `num_replicas`, autoscaled ones that floor as `min_replicas` (their maximum raised to it
    if lower). Validated by the app's own models before it is written."""
    from pdserve.deployments.config.app import AppConfig

    doc = yaml.safe_load(Path(source).read_text())
    args = doc["applications"][application]["args"]
    (entry,) = [m for m in args["models"] if m["model_id"] == model_id]
    pools = {role: entry.pop(role, None) for role in ("prefill", "decode", "colocated")}
    template = pools["decode"] or pools["colocated"] or pools["prefill"] or {}
    entry["mode"] = candidate.mode
    for role, count in candidate.replicas.items():
        pool = dict(pools.get(role) or template)
        scaling = pool.get("autoscaling_config")
        if scaling:
            pool["autoscaling_config"] = {
                **scaling, "min_replicas": count,
                "max_replicas": max(count, int(scaling.get("max_replicas", count)))}
            pool["autoscaling_config"].pop("initial_replicas", None)
            pool.pop("num_replicas", None)
        else:
            pool["num_replicas"] = count
        entry[role] = pool
    if args.get("replica_budget") is not None:  # raised only if the new floors do not fit
        floors = AppConfig.model_validate({**args, "replica_budget": None}).minimum_replicas()
        args["replica_budget"] = max(int(args["replica_budget"]), floors)
    AppConfig.model_validate(args)
    out.write_text(yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False))
    return doc


class _PlainDumper(yaml.SafeDumper):
    """Writes shared values out in full (no `&id001` anchors where the source had `<<:`)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def plan(profile: Profile, model: Any, trace: list[TraceRequest], ttft_ms: float,
         itl_ms: float, attainment: float, budget: int, search_rate: bool = False,
         seed: int = 0, modes: tuple[str, ...] = ("colocated", "pd"),
         progress: Any = None, app: Any = None,
         ) -> tuple[list[Evaluation], dict[Candidate, Estimate]]:
    """Estimate every candidate within `budget` engines, simulate those the estimate keeps."""
    from pdserve.simulation.engine_config import check_profile_fits, engine_args

    check_profile_fits(profile, model)
    config = engine_args(profile, model).create_engine_config()
    chunk = config.scheduler_config.max_num_batched_tokens
    seqs = config.scheduler_config.max_num_seqs
    workload = Workload.of(trace)
    local_below = model.routing.local_prefill_below_tokens
    estimates = {c: estimate(profile, workload, c, chunk, seqs, local_below)
                 for c in candidates(budget, modes)}
    kept = prune(estimates, ttft_ms / 1e3, itl_ms / 1e3)
    evaluations = []
    for candidate in progress(kept) if progress else kept:
        evaluation = Evaluation(candidate, estimates[candidate],
                                simulate(profile, model, trace, candidate, ttft_ms, itl_ms,
                                         seed, app))
        if search_rate:
            evaluation.max_rate_scale = max_rate_scale(
                profile, model, trace, candidate, ttft_ms, itl_ms, attainment, seed,
                app=app)
        evaluations.append(evaluation)
    return evaluations, estimates


def markdown(result: dict[str, Any]) -> str:
    w = result["workload"]
    lines = [f"# Plan: {result['model']}", "",
             f"- command: `{result['command']}`", f"- profile: `{result['profile']}`",
             f"- workload: {result['requests']} requests, {w['rate']:.2f} req/s, mean prompt "
             f"{w['prompt']:.0f} tokens, mean output {w['output']:.0f} tokens",
             f"- SLO: TTFT ≤ {result['slo']['ttft_ms']:g} ms and every gap ≤ "
             f"{result['slo']['itl_ms']:g} ms for ≥ {result['slo']['attainment']:g} % of requests;"
             f" budget {result['budget']} engines",
             f"- candidates: {result['estimated']} estimated in closed form, "
             f"{len(result['evaluations'])} simulated", "",
             "| candidate | engines | est. prefill ρ | est. decode ρ | est. TTFT ms | "
             "est. ITL ms | SLO met | goodput req/s | goodput / engine | TTFT p90 ms | "
             "ITL p90 ms | max rate × |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["evaluations"]:
        est, s = e["estimate"], e["summary"]

        def ms(v: float | None) -> str:
            return "—" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"

        lines.append(
            f"| {e['label']} | {e['engines']} | {est['prefill_util']:.2f} | "
            f"{est['decode_util']:.2f} | {ms(est['ttft_s'] * 1e3)} | {ms(est['itl_s'] * 1e3)} | "
            f"{s.get('slo_met_pct') or 0:.1f} % | {s.get('slo_goodput') or 0:.2f} | "
            f"{(s.get('slo_goodput') or 0) / e['engines']:.2f} | {ms(s.get('p90_ttft_ms'))} | "
            f"{ms(s.get('p90_itl_ms'))} | "
            + ("—" if e["max_rate_scale"] is None else f"{e['max_rate_scale']:.2f}") + " |")
    lines += ["", "Frontier (no other candidate is at least as good on both goodput per engine "
              "and SLO attainment and better on one): " + (", ".join(result["frontier"]) or "—"),
              ""]
    rec = result["recommended"]
    lines.append(f"**Recommended: {rec['label']}** ({rec['engines']} engines), written to "
                 f"`{result['config_out']}`" if rec else
                 "**No candidate meets the target** within the budget: raise --budget, relax "
                 "the SLO, or lower the rate.")
    return "\n".join(lines) + "\n"


def run(profile_path: Path, config: Path, model_id: str | None, trace: list[TraceRequest],
        ttft_ms: float, itl_ms: float, attainment: float, budget: int | None, out: Path,
        search_rate: bool = False, seed: int = 0, command: str = "") -> dict[str, Any]:
    """`pdserve plan`: writes plan.json, plan.md and, when a candidate meets the target, the
    recommended serve config (`serve_config.yaml`)."""
    import json

    from tqdm import tqdm

    from pdserve.simulation import profile_file
    from pdserve.simulation.serve_config import load_app, pick_model

    profile = profile_file.load(profile_path)
    app = load_app(config)
    model = pick_model(app, model_id)
    budget = budget or app.replica_budget or 4
    evaluations, estimates = plan(
        profile, model, trace, ttft_ms, itl_ms, attainment, budget, search_rate, seed,
        progress=lambda xs: tqdm(xs, desc="simulating candidates", unit="candidate"),
        app=app)
    out.mkdir(parents=True, exist_ok=True)
    chosen = recommend(evaluations, attainment)
    config_out = out / "serve_config.yaml"
    if chosen is not None:
        write_config(config, model.model_id, chosen.candidate, config_out)

    def row(e: Evaluation) -> dict[str, Any]:
        return {"label": e.candidate.label(), "mode": e.candidate.mode,
                "replicas": e.candidate.replicas, "engines": e.candidate.engines,
                "estimate": vars(e.estimate), "summary": e.summary,
                "max_rate_scale": e.max_rate_scale}

    workload = Workload.of(trace)
    result = {
        "command": command, "profile": str(profile_path), "config": str(config),
        "model": model.model_id, "requests": len(trace), "workload": vars(workload),
        "slo": {"ttft_ms": ttft_ms, "itl_ms": itl_ms, "attainment": attainment},
        "budget": budget, "estimated": len(estimates),
        "evaluations": [row(e) for e in sorted(evaluations,
                                               key=lambda e: (e.candidate.engines,
                                                              e.candidate.mode))],
        "frontier": [e.candidate.label() for e in frontier(evaluations)],
        "recommended": row(chosen) if chosen else None,
        "config_out": str(config_out) if chosen else None,
    }
    (out / "plan.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "plan.md").write_text(markdown(result))
    return result
