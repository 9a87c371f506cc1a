"""Several models of one app on one clock (`pdserve simulate --model A --also-model B`): each
model's pools simulated as `graph.Simulation` does, one autoscaler over all of them, so the
application-level policy shares the app's replica budget between the models as it does
served (`SLOAutoscalingPolicy`: restoring growth, then the largest SLO deficit first).

Each model gets its own trace; every model runs on the one profile given (the same engines);
on a CPU host all models' engines and graph share its cores (`host_cpu.HostCPU`, the app's
pools numbered in the app's order, as the engine host binds them). Replica-seconds run to the
app's last token, for every model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pdserve.simulation import profile_file
from pdserve.simulation.autoscaler import Autoscaler
from pdserve.simulation.events import EventLoop
from pdserve.simulation.graph import Outcome, Simulation, planner_profiles
from pdserve.simulation.host_cpu import HostCPU
from pdserve.simulation.metrics import summarize
from pdserve.simulation.serve_config import (
    autoscaling_policy,
    load_app,
    pick_model,
    with_planner,
)
from pdserve.simulation.traces import TraceRequest


class AppSimulation:
    """The models of `traces` (model id → its requests), of one app, on one clock."""

    def __init__(self, profile: profile_file.Profile, app: Any, models: list[Any],
                 traces: dict[str, list[TraceRequest]], autoscaling: str | None,
                 seed: int = 0, startup_s: float | None = None) -> None:
        self.loop = EventLoop()
        scaled = autoscaling is not None and any(
            c.autoscaling_config for m in models for c in m.pools().values())
        cpu = HostCPU(self.loop, profile.graph_overhead,
                      [(p.model, p.role) for p in app.pool_names()], app.cpu_binding == "auto",
                      profile.core_contention)
        self.sims = {m.model_id: Simulation(profile, m, traces[m.model_id], seed=seed,
                                            startup_s=startup_s, loop=self.loop,
                                            scaled_by_app=scaled, cpu=cpu)
                     for m in models}
        self.autoscaler = None
        if scaled:
            self.autoscaler = Autoscaler(list(self.sims.values()), autoscaling,
                                         app.replica_budget, app.oversubscribe_cores,
                                         planner_profiles(models))
            for sim in self.sims.values():
                sim.autoscaler = self.autoscaler

    def run(self) -> dict[str, list[Outcome]]:
        if self.autoscaler is not None:
            self.autoscaler.start()
        for sim in self.sims.values():
            sim.schedule()
        self.loop.run()
        return {model: sim.outcomes for model, sim in self.sims.items()}


def simulate_app(profile_path: Path, config: Path, traces: dict[str, list[TraceRequest]],
                 out: Path, seed: int, slo_ttft_ms: float | None, slo_itl_ms: float | None,
                 autoscaling: str | None = "config", startup_s: float | None = None,
                 command: str = "", planner_profile: Path | None = None) -> dict[str, Any]:
    """Simulate the models of `traces` together; write `report.json`, `report.md`: per model
    and for the app (SLO attainment over every request, replica-seconds of every engine)."""
    profile = profile_file.load(profile_path)
    app = load_app(config)
    models = [with_planner(pick_model(app, model_id), planner_profile) for model_id in traces]
    if len({m.model_id for m in models}) < len(models):
        raise ValueError("a model was named twice (or by an alias of another name given)")
    traces = {m.model_id: trace for m, trace in zip(models, traces.values(), strict=True)}
    if autoscaling == "config":
        policies = {autoscaling_policy(config, m) for m in models
                    if any(c.autoscaling_config for c in m.pools().values())} or {"slo_app"}
        if len(policies) > 1:
            raise ValueError(f"the models' pools run different policies {sorted(policies)}")
        (autoscaling,) = policies
    started = time.perf_counter()
    app_sim = AppSimulation(profile, app, models, traces, autoscaling, seed, startup_s)
    outcomes = app_sim.run()
    wall_s = time.perf_counter() - started
    end = max(sim.last_token_s() for sim in app_sim.sims.values())  # the app's engines run
    per_model = {model: summarize(outcomes[model], slo_ttft_ms, slo_itl_ms,  # until then
                                  app_sim.sims[model].replica_seconds(end)) for model in traces}
    every = [o for model in traces for o in outcomes[model]]
    total = summarize(every, slo_ttft_ms, slo_itl_ms,
                      sum(s["replica_seconds"] for s in per_model.values()))
    scaler = app_sim.autoscaler
    result = {
        "command": command, "profile": str(profile_path), "config": str(config),
        "models": list(traces), "seed": seed, "policy": autoscaling, "wall_s": wall_s,
        "requests": {model: len(trace) for model, trace in traces.items()},
        "slo": {"ttft_ms": slo_ttft_ms, "itl_ms": slo_itl_ms},
        "actions": [vars(a) for a in scaler.actions] if scaler else [],
        "summary": total, "per_model": per_model,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.md").write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, Any]) -> str:
        met = s.get("slo_met_pct")
        goodput = s.get("slo_goodput")
        return (f"| {name} | {s['completed']} | {'—' if met is None else f'{met:.1f}'} | "
                f"{'—' if goodput is None else f'{goodput:.2f}'} | {s['p90_ttft_ms'] or 0:.0f} | "
                f"{s['p90_itl_ms'] or 0:.1f} | {s['replica_seconds']:.0f} |")

    lines = [f"# Simulated app: {', '.join(result['models'])} ({result['policy']})", "",
             f"- command: `{result['command']}`", f"- profile: `{result['profile']}`",
             f"- config: `{result['config']}`, seed {result['seed']}, "
             f"{result['wall_s']:.0f} s of wall time",
             f"- scaling actions: {len(result['actions'])}", "",
             "| model | completed | SLO met % | goodput req/s | TTFT p90 ms | ITL p90 ms | "
             "replica-s |", "|---|---|---|---|---|---|---|"]
    lines += [row(model, s) for model, s in result["per_model"].items()]
    lines.append(row("**app**", result["summary"]))
    return "\n".join(lines) + "\n"
