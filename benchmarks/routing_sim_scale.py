"""Multi-turn chats at scales this box cannot hold, simulated: pdserve's prefix-aware router
against Ray Serve's default power-of-two router, on engines that each have hardware of their
own (a GPU profile), from 2 replicas up.

    python -m pdserve.benchmarks.routing_sim_scale \
        --profile benchmarks/profiles/h100-llama-3.1-8b.json --replicas 2,4,8,16 \
        --out benchmarks/results/routing-sim-h100-v1

Why: measured on this box (`routing_bench`, 2 engines on 2 cores) pow2 already reaches ~90 %
of the oracle hit rate on `multiturn`: with 2 replicas each holds most of every session's
prefix after a few turns; with 4 engines on the 2 cores pow2's hit rate fell to 49 % of the
oracle but the engines were CPU-bound. Each router sees the same trace (`traces.multiturn`,
open-loop, the session rate growing with the replicas so the load per engine stays the same)
on the simulator's engines (vLLM's own scheduler and KV cache manager, prefix caching on),
several seeds. Reported per replica count and router: TTFT p50 (min–max over seeds), p90 and
mean, E2E p50, how many replicas a session's turns went to (1: every turn where its prefix
is), and pow2's TTFT p50 and mean over pdserve's (median of same-seed ratios). TTFT is
two-peaked here (a turn that finds its prefix vs one that computes it all), so its p50 jumps
from one peak to the other once more than half the turns miss; the mean moves smoothly.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from pdserve.benchmarks import report, systems
from pdserve.deployments.config.app import AppConfig
from pdserve.simulation.profile_file import Profile
from pdserve.simulation.traces import TraceRequest, multiturn

#: the routers compared, as a pool's Ray Serve `request_router_config` names them
ROUTERS: dict[str, dict[str, Any]] = {
    "pdserve": {},  # pdserve's default for a colocated pool: `PrefixAwareRouter`
    "pow2": {"request_router_class":
             "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter"},
}
MODEL_ID = "chat"


def app_config(profile: Profile, replicas: int, router: str) -> AppConfig:
    """One colocated model of `replicas` engines with the profile's engine arguments, routed
    by `router`."""
    pool: dict[str, Any] = {"num_replicas": replicas}
    if ROUTERS[router]:
        pool["request_router_config"] = ROUTERS[router]
    return AppConfig.model_validate({"models": [{
        "model_id": MODEL_ID, "model": profile.model, "mode": "colocated",
        "engine_kwargs": profile.engine_kwargs, "colocated": pool}]})


def replicas_per_session(trace: list[TraceRequest], replicas: list[str],
                         first_tokens: int) -> float:
    """Mean number of replicas a session's turns went to (a session is known by its first
    prompt's tokens, which every later turn repeats)."""
    sessions: dict[tuple[int, ...], set[str]] = {}
    for request, replica in zip(trace, replicas, strict=True):
        sessions.setdefault((request.prompt_ids or ())[:first_tokens], set()).add(replica)
    return statistics.mean(len(r) for r in sessions.values())


def one_run(profile: Profile, app: AppConfig, trace: list[TraceRequest], seed: int,
            first_tokens: int) -> dict[str, float]:
    """One simulated run of `trace`: TTFT p50/p90/mean, E2E p50, failed requests, and how
    many replicas a session's turns went to."""
    from pdserve.simulation.graph import Simulation
    from pdserve.simulation.metrics import summarize
    from pdserve.simulation.serve_config import pick_model

    sim = Simulation(profile, pick_model(app, None), trace, seed=seed, app=app)
    outcomes = sim.run()
    summary = summarize(outcomes)
    e2e = sorted((o.token_s[-1] - o.arrival_s) * 1e3 for o in outcomes if o.done)
    return {"p50_ttft_ms": summary["p50_ttft_ms"], "p90_ttft_ms": summary["p90_ttft_ms"],
            "mean_ttft_ms": summary["mean_ttft_ms"], "p50_e2e_ms": statistics.median(e2e),
            "failed": summary["failed"],
            "replicas_per_session": replicas_per_session(
                trace, [o.replica for o in outcomes], first_tokens)}


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The report: one row per replica count and router."""
    lines = ["# Multi-turn routing at scale, simulated: pdserve vs Ray's power-of-two", "",
             f"- command: `{meta['command']}`",
             f"- date: {meta['date']}; commit: {meta['git_revision']}",
             f"- profile: `{meta['profile']}` (model {meta['model']}); every engine on hardware "
             "of its own", f"- trace: {meta['trace']}; seeds {meta['seeds']} (medians, "
             "TTFT p50 also min–max)", "",
             "| replicas | router | TTFT p50 ms | TTFT p90 ms | TTFT mean ms | E2E p50 ms | "
             "replicas per session | failed | pow2 / pdserve TTFT p50 | pow2 / pdserve TTFT "
             "mean |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ratios = (f"{row['pow2_over_pdserve']:.2f}x | {row['pow2_over_pdserve_mean']:.2f}x |"
                  if "pow2_over_pdserve" in row else "| |")
        lines.append(
            f"| {row['replicas']} | {row['router']} | {row['p50_ttft_ms']:.1f} "
            f"({row['p50_ttft_ms_min']:.1f}–{row['p50_ttft_ms_max']:.1f}) | "
            f"{row['p90_ttft_ms']:.1f} | {row['mean_ttft_ms']:.1f} | {row['p50_e2e_ms']:.1f} | "
            f"{row['replicas_per_session']:.2f} | {row['failed']:g} | {ratios}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pdserve.benchmarks.routing_sim_scale",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", required=True, type=Path)
    p.add_argument("--replicas", default="2,4,8,16")
    p.add_argument("--sessions-per-replica", type=int, default=16)
    p.add_argument("--session-rate-per-replica", type=float, default=0.5,
                   help="sessions starting per second per replica")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--first-tokens", type=int, default=2048)
    p.add_argument("--turn-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--think-s", type=float, default=5.0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    profile = Profile.model_validate_json(args.profile.read_text())
    if not (profile.hf_config or {}).get("vocab_size"):
        raise SystemExit("the profile names no vocabulary size (hf_config.vocab_size)")
    vocab = int(profile.hf_config["vocab_size"])
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[dict[str, Any]] = []
    for replicas in (int(r) for r in args.replicas.split(",")):
        runs: dict[str, list[dict[str, float]]] = {router: [] for router in ROUTERS}
        for seed in seeds:
            trace = multiturn(sessions_per_s=args.session_rate_per_replica * replicas,
                              sessions=args.sessions_per_replica * replicas, turns=args.turns,
                              first_tokens=args.first_tokens, turn_tokens=args.turn_tokens,
                              output_tokens=args.output_tokens, think_s=args.think_s,
                              vocab=vocab, seed=seed)
            for router in ROUTERS:
                runs[router].append(one_run(profile, app_config(profile, replicas, router),
                                            trace, seed, args.first_tokens))
        pairs = list(zip(runs["pdserve"], runs["pow2"], strict=True))
        for router, results in runs.items():
            row = {"replicas": replicas, "router": router,
                   **{k: statistics.median(r[k] for r in results) for k in results[0]},
                   "p50_ttft_ms_min": min(r["p50_ttft_ms"] for r in results),
                   "p50_ttft_ms_max": max(r["p50_ttft_ms"] for r in results)}
            if router == "pdserve":
                row["pow2_over_pdserve"] = statistics.median(
                    b["p50_ttft_ms"] / a["p50_ttft_ms"] for a, b in pairs)
                row["pow2_over_pdserve_mean"] = statistics.median(
                    b["mean_ttft_ms"] / a["mean_ttft_ms"] for a, b in pairs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    command = shlex.join(["python", "-m", "pdserve.benchmarks.routing_sim_scale",
                          *(argv if argv is not None else sys.argv[1:])])
    meta = {**report.run_metadata(command, systems.REPO_ROOT),
            "profile": str(args.profile), "model": profile.model, "seeds": seeds,
            "trace": (f"{args.sessions_per_replica} chat sessions per replica starting at "
                      f"{args.session_rate_per_replica}/s per replica (Poisson), "
                      f"{args.turns} turns each: first prompt {args.first_tokens} + "
                      f"{args.turn_tokens} tokens, then + {args.output_tokens} (the answer) "
                      f"+ {args.turn_tokens} per turn, {args.output_tokens} out, think time "
                      f"{args.think_s} s (exponential)")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    (args.out / "report.md").write_text(markdown(meta, rows))
    print(f"wrote {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
