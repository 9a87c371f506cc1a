"""`pdserve simulate`: one model of a serve config over a trace, simulated with a profile;
writes `report.json`, `report.md` (vLLM's summary fields, goodput and SLO attainment,
replica-seconds, engine occupancy) and `timeline.png` (TTFT and ITL distributions, arrivals
against first tokens)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pdserve.simulation import profile_file, traces
from pdserve.simulation.graph import Simulation
from pdserve.simulation.metrics import summarize
from pdserve.simulation.serve_config import (
    autoscaling_policy,
    load_app,
    pick_model,
    with_planner,
)
from pdserve.simulation.traces import ARRIVALS


def generated_trace(arrivals: str, rate: float, count: int, duration_s: float | None,
                    prompt: int, output: int, mixed: bool, seed: int) -> list:
    lengths = (traces.mixed_lengths(prompt, 16, 64, output) if mixed
               else traces.fixed_lengths(prompt, output))
    if arrivals == "poisson":
        return traces.poisson(rate, count, lengths, seed)
    if arrivals == "bursty":
        return traces.gamma(rate, count, lengths, burstiness=0.25, seed=seed)
    if arrivals == "diurnal":
        span = duration_s or count / rate
        return traces.diurnal(rate, span, period_s=span, lengths=lengths, seed=seed)
    raise ValueError(f"unknown arrivals {arrivals!r}; known: {', '.join(ARRIVALS)}")


def dataset_trace(config: Path, model_id: str | None, arguments: str, tokenizer: str | None,
                  arrivals: str, rate: float | None, duration_s: float | None,
                  seed: int) -> list:
    """Requests from a vLLM benchmark dataset (tokenized with the served model's tokenizer
    unless told), at the dataset's own times (timed traces) or at generated arrivals."""
    from pdserve.models import resolve_model

    if tokenizer is None:
        tokenizer = str(resolve_model(pick_model(load_app(config), model_id).model))
    requests = traces.read_vllm_dataset(arguments, tokenizer)
    timed = any(r.arrival_s for r in requests)
    if rate is None:
        if not timed:
            raise ValueError("this dataset has no arrival times: give --rate (and --arrivals)")
        return requests
    times = generated_trace(arrivals, rate, len(requests), duration_s, 1, 1, False, seed)
    return traces.with_arrivals(requests, times)


def simulate(profile_path: Path, config: Path, trace: list, out: Path, model_id: str | None,
             seed: int, slo_ttft_ms: float | None, slo_itl_ms: float | None,
             replicas: dict[str, int] | None = None, command: str = "",
             autoscaling: str | None = "config", startup_s: float | None = None,
             planner_profile: Path | None = None) -> dict[str, Any]:
    """`autoscaling`: "config" (the policy the config runs), one of `autoscaler.POLICIES`,
    or None (pools stay at their initial counts). `planner_profile`: the model's slow loop runs
    on it (as the config's `planner.profile`)."""
    profile = profile_file.load(profile_path)
    app = load_app(config)
    model = with_planner(pick_model(app, model_id), planner_profile)
    if autoscaling == "config":
        autoscaling = None if replicas else autoscaling_policy(config, model)
    started = time.perf_counter()
    sim = Simulation(profile, model, trace, seed=seed, replicas=replicas,
                     autoscaling=autoscaling, startup_s=startup_s,
                     replica_budget=app.replica_budget,
                     oversubscribe_cores=app.oversubscribe_cores,
                     app=app)
    outcomes = sim.run()
    wall_s = time.perf_counter() - started
    summary = summarize(outcomes, slo_ttft_ms, slo_itl_ms, sim.replica_seconds())
    span = max((o.token_s[-1] for o in outcomes if o.token_s), default=0.0)
    result = {
        "command": command, "profile": str(profile_path), "config": str(config),
        "model": model.model_id, "mode": model.mode, "seed": seed, "requests": len(trace),
        "replicas": sim.initial_replicas,
        "autoscaling": None if sim.autoscaler is None else {
            "policy": sim.autoscaler.policy, "startup_s": sim.startup_s,
            "actions": [vars(a) for a in sim.autoscaler.actions],
            "peak_replicas": {name: peak_replicas(pool.history)
                              for name, pool in sim.pools.items()}},
        "slo": {"ttft_ms": slo_ttft_ms, "itl_ms": slo_itl_ms},
        "simulated_s": span, "wall_s": wall_s,
        "speedup": span / wall_s if wall_s else None,
        "busy_share": busy_shares(sim, span),
        "transfers": len(sim.transfers), "summary": summary,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.md").write_text(markdown(result))
    plot(outcomes, sim, out / "timeline.png", f"{model.model_id} ({model.mode})")
    return result


def busy_shares(sim: Simulation, span: float) -> dict[str, float | None]:
    """Each replica's share of its life (within the run) spent stepping."""
    out: dict[str, float | None] = {}
    for pool in sim.pools.values():
        for r in pool.history:
            life = min(span, r.stopped_s if r.stopped_s is not None else span) - r.started_s
            out[r.name] = r.busy_s / life if life > 0 else None
    return out


def peak_replicas(replicas: list) -> int:
    """Most replicas alive at once (started, not yet stopped)."""
    changes = sorted([(r.started_s, 1) for r in replicas]
                     + [(r.stopped_s, -1) for r in replicas if r.stopped_s is not None],
                     key=lambda c: (c[0], c[1]))
    alive = peak = 0
    for _, change in changes:
        alive += change
        peak = max(peak, alive)
    return peak


def autoscaling_lines(result: dict[str, Any]) -> list[str]:
    scaling = result.get("autoscaling")
    if not scaling:
        return ["- autoscaling: off (replicas fixed)"]
    actions = scaling["actions"]
    shown = ", ".join(f"{a['time_s']:.0f} s {a['pool']} {a['replicas_from']}→{a['replicas_to']} "
                      f"({a['reason']})" for a in actions[:12])
    more = f" … ({len(actions) - 12} more)" if len(actions) > 12 else ""
    return [f"- autoscaling: `{scaling['policy']}`, replica start-up {scaling['startup_s']:.0f} s, "
            f"peak replicas {json.dumps(scaling['peak_replicas'])}; "
            f"{len(actions)} scaling actions" + (f": {shown}{more}" if actions else "")]


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]

    def ms(key: str) -> str:
        return "—" if s.get(key) is None else f"{s[key]:.1f}"

    lines = [f"# Simulated: {result['model']} ({result['mode']})", "",
             f"- command: `{result['command']}`", f"- profile: `{result['profile']}`",
             f"- config: `{result['config']}`, replicas {json.dumps(result['replicas'])}",
             f"- requests: {result['requests']}, simulated {result['simulated_s']:.1f} s in "
             f"{result['wall_s']:.1f} s of wall time ({result['speedup']:.0f}× real time), "
             f"seed {result['seed']}",
             f"- plans: {json.dumps(s['plans'])}; KV pulls: {result['transfers']}",
             "- engine occupancy: " + ", ".join(f"{k} {v:.0%}" for k, v in
                                                 result["busy_share"].items() if v is not None),
             *autoscaling_lines(result),
             "", "| metric | p50 | p90 | p99 | mean |", "|---|---|---|---|---|"]
    for name in ("ttft", "itl", "tpot"):
        lines.append(f"| {name.upper()} ms | {ms(f'p50_{name}_ms')} | {ms(f'p90_{name}_ms')} | "
                     f"{ms(f'p99_{name}_ms')} | {ms(f'mean_{name}_ms')} |")
    lines += ["", f"- completed {s['completed']}, failed {s['failed']}, "
              f"{s['request_throughput'] or 0:.2f} req/s, "
              f"replica-seconds {s.get('replica_seconds', 0):.1f}"]
    if "slo_goodput" in s:
        slo = result["slo"]
        lines.append(f"- SLO (TTFT ≤ {slo['ttft_ms']} ms, every gap ≤ {slo['itl_ms']} ms): "
                     f"goodput {s['slo_goodput'] or 0:.2f} req/s, met {s['slo_met_pct']:.1f}%")
    return "\n".join(lines) + "\n"


def plot(outcomes: list, sim: Simulation, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    done = [o for o in outcomes if o.token_s]
    scaled = sim.autoscaler is not None
    fig, axes = plt.subplots(1, 4 if scaled else 3, figsize=(20 if scaled else 15, 4))
    for ax, values, name in ((axes[0], [o.ttft_s * 1e3 for o in done], "TTFT ms"),
                             (axes[1], [g * 1e3 for o in done for g in o.itls_s], "ITL ms")):
        if values:
            xs = np.sort(values)
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs))
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("share of requests ≤ x" if name.startswith("TTFT") else "share of gaps")
        ax.grid(alpha=0.3)
    arrivals = [o.arrival_s for o in outcomes]
    firsts = [o.token_s[0] for o in done]
    axes[2].plot(arrivals, np.arange(1, len(arrivals) + 1), label="arrived")
    axes[2].plot(sorted(firsts), np.arange(1, len(firsts) + 1), label="first token")
    axes[2].set_xlabel("simulated s")
    axes[2].set_ylabel("requests")
    axes[2].legend()
    axes[2].grid(alpha=0.3)
    if scaled:
        for key in sim.autoscaler.pools:
            role = key[1]
            points = [(t, serving, target) for t, k, serving, target in sim.autoscaler.timeline
                      if k == key]
            if points:
                ts, serving, target = zip(*points, strict=True)
                axes[3].step(ts, serving, where="post", label=f"{role} serving")
                axes[3].step(ts, target, where="post", linestyle="--", label=f"{role} target")
        axes[3].set_xlabel("simulated s")
        axes[3].set_ylabel("replicas")
        axes[3].legend()
        axes[3].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
