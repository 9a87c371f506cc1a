"""SLO autoscaling benchmark: pdserve's policy vs Ray Serve's default queue-length policy.

The same two-model app (A: PD, B: colocated, the `bench` model) and the same time-varying
trace (ramp up, plateau, spike, ramp down, open-loop Poisson arrivals per model) run under each
policy, one after the other on fresh engines, `--rounds` times (alternating). Only the policy
differs: pdserve's application-level `SLOAutoscalingPolicy` with per-model `slo` targets and
planner floors (`planner.profile`: the calibrated profiles of the `bench` model on this box;
`--no-planner` leaves them out), bounded by the box's cores; or Ray's default policy with
`target_ongoing_requests`; pools, bounds and Ray's delays are identical.

    .venv/bin/python -m pdserve.benchmarks.autoscale_bench --out benchmarks/results/autoscale-cpu-v1

Reports SLO attainment (share of requests within both TTFT and ITL targets), TTFT/ITL p50/p99,
engine replica-seconds, scaling actions, and a PNG of replicas per pool and TTFT over time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from pdserve.benchmarks import systems
from pdserve.benchmarks.autoscale_report import POLICIES, plot, report, summarize
from pdserve.benchmarks.sse import stream_chunks
from pdserve.tiny_model import random_words, recall_prompt_from_words

MODEL_A, MODEL_B = "bench-pd", "bench-colo"
ENGINE = {"dtype": "float32", "max_model_len": 2048, "max_num_batched_tokens": 512,
          "block_size": 32, "kv_cache_memory_bytes": 256 * 2**20, "enforce_eager": True,
          "seed": 0}
#: Identical under both policies (Ray applies them on top of either).
RAY_SCALING = {"metrics_interval_s": 2, "look_back_period_s": 10, "upscale_delay_s": 15,
               "downscale_delay_s": 60}
BOUNDS = {"prefill": (1, 2), "decode": (1, 1), "colocated": (1, 2)}
#: An idle PD request of ~900 prompt tokens takes ~0.8-1.4 s to its first token on this box.
SLO = {MODEL_A: {"ttft_ms": 3000.0, "itl_ms": 200.0}, MODEL_B: {"ttft_ms": 3000.0, "itl_ms": 200.0}}


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    start_rps: dict[str, float]
    end_rps: dict[str, float]


def default_phases(scale: float = 1.0, rate_scale: float = 1.0) -> list[Phase]:
    """Ramp up, plateau, spike, ramp down (seconds × `scale`, requests/s × `rate_scale`): model
    A carries the swings, model B a steady load with its own smaller spike."""
    def rps(a: float, b: float) -> dict[str, float]:
        return {MODEL_A: a * rate_scale, MODEL_B: b * rate_scale}

    low, mid, high = rps(0.1, 0.05), rps(0.3, 0.1), rps(0.8, 0.25)
    return [
        Phase("ramp up", 150 * scale, low, mid),
        Phase("plateau", 150 * scale, mid, mid),
        Phase("spike", 90 * scale, high, high),
        Phase("ramp down", 150 * scale, mid, low),
    ]


def rate_at(phases: list[Phase], t: float, model: str) -> float:
    start = 0.0
    for phase in phases:
        if t < start + phase.seconds:
            f = (t - start) / phase.seconds
            a, b = phase.start_rps[model], phase.end_rps[model]
            return a + (b - a) * f
        start += phase.seconds
    return 0.0


def arrivals(phases: list[Phase], model: str, seed: int) -> list[float]:
    """Non-homogeneous Poisson arrival times (thinning), deterministic for a seed."""
    rng = random.Random(f"{seed}-{model}")
    total = sum(p.seconds for p in phases)
    peak = max(max(p.start_rps[model], p.end_rps[model]) for p in phases)
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= total:
            return out
        if rng.random() < rate_at(phases, t, model) / peak:
            out.append(t)


@dataclass(frozen=True)
class Shape:
    prompt_words: int
    max_tokens: int


SHAPES = {MODEL_A: Shape(prompt_words=380, max_tokens=16),  # ~900 tokens: prefill-heavy
          MODEL_B: Shape(prompt_words=60, max_tokens=48)}  # ~150 tokens: decode-heavy


def prompts(model: str, n: int, seed: int) -> list[str]:
    rng = random.Random(f"prompts-{seed}-{model}")
    shape = SHAPES[model]
    def words() -> list[str]:  # the vocabulary has 324 words: longer spans take several draws
        out: list[str] = []
        while len(out) < shape.prompt_words:
            out += random_words(rng, min(300, shape.prompt_words - len(out)))
        return out

    return [recall_prompt_from_words(words(), 8) for _ in range(n)]


#: The `planner.profile` of each model under pdserve's policy (the slow loop's floor): what
#: `pdserve profile` measured of the `bench` model on this box, calibrated to the served graph.
PLANNER_PROFILES = {
    MODEL_A: "benchmarks/results/sim-validation-cpu-v1/profile-pd.json",
    MODEL_B: "benchmarks/results/sim-validation-cpu-v1/profile-colocated.json",
}
PLANNER_INTERVAL_S = 30.0


def serve_config(policy: str, model_dir: str, planner: bool = True) -> dict[str, Any]:
    def pool(role: str) -> dict[str, Any]:
        lo, hi = BOUNDS[role]
        scaling: dict[str, Any] = {"min_replicas": lo, "max_replicas": hi, **RAY_SCALING}
        if policy == "ray_default":
            scaling["target_ongoing_requests"] = 2  # Ray Serve's own default
        return {"autoscaling_config": scaling, "ray_actor_options": {"num_cpus": 0.4}}

    def slo(model: str) -> dict[str, Any]:
        if policy != "pdserve_slo":
            return {}
        out: dict[str, Any] = {"slo": {**SLO[model], "percentile": 90}}
        if planner:  # absolute: the app is built in a Ray task, wherever its cwd is
            out["planner"] = {"profile": str(systems.REPO_ROOT / PLANNER_PROFILES[model]),
                              "interval_s": PLANNER_INTERVAL_S}
        return out

    args = {"models": [
        {"model_id": MODEL_A, "model": model_dir, "mode": "pd", "engine_kwargs": ENGINE,
         "prefill": pool("prefill"), "decode": pool("decode"), **slo(MODEL_A)},
        {"model_id": MODEL_B, "model": model_dir, "mode": "colocated", "engine_kwargs": ENGINE,
         "colocated": pool("colocated"), **slo(MODEL_B)},
    ]}
    return systems.serve_config_doc(
        args, systems.SLO_POLICY if policy == "pdserve_slo" else None)


async def one_request(http: httpx.AsyncClient, model: str, prompt: str, max_tokens: int,
                      sent_at: float, t0: float) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True}
    start = time.perf_counter()
    first = last = None
    tokens = 0
    try:
        async for chunk in stream_chunks(http, "/v1/completions", body):
            if chunk["choices"][0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
                tokens += 1
        ok = first is not None
    except Exception as exc:  # counted as a failed request
        return {"model": model, "t": sent_at, "ok": False,
                "error": f"{type(exc).__name__}: {exc}"}
    ttft = (first - start) * 1000 if first else None
    itl = (last - first) * 1000 / (tokens - 1) if first and last and tokens > 1 else None
    return {"model": model, "t": sent_at, "ok": ok, "ttft_ms": ttft, "itl_ms": itl,
            "chunks": tokens, "e2e_ms": (time.perf_counter() - start) * 1000,
            "late_s": start - (t0 + sent_at)}


async def drive(phases: list[Phase], seed: int) -> tuple[list[dict[str, Any]], list[dict]]:
    """Send the trace open-loop; poll replicas per pool every 2 s meanwhile."""
    plan = sorted((t, model, i) for model in (MODEL_A, MODEL_B)
                  for i, t in enumerate(arrivals(phases, model, seed)))
    texts = {m: prompts(m, 64, seed) for m in (MODEL_A, MODEL_B)}
    timeline: list[dict[str, Any]] = []
    total = sum(p.seconds for p in phases)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=systems.PDSERVE_URL, timeout=600,
                                 limits=limits) as http:
        for model in (MODEL_A, MODEL_B):  # every pool's router starts before the clock does
            await one_request(http, model, texts[model][0], 2, 0.0, time.perf_counter())
        t0 = time.perf_counter()

        async def poll() -> None:
            while (now := time.perf_counter() - t0) < total + 30:
                try:
                    pools = (await http.get("/v1/pools", timeout=10)).json()
                    timeline.append({"t": now, **{k: v["replicas"] for k, v in pools.items()
                                                  if v["replicas"] is not None}})
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(2.0)

        poller = asyncio.create_task(poll())
        tasks = []
        for at, model, i in plan:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            shape = SHAPES[model]
            tasks.append(asyncio.create_task(one_request(
                http, model, texts[model][i % 64], shape.max_tokens, at, t0)))
        records = await asyncio.gather(*tasks)
        poller.cancel()
    return list(records), timeline


def run_policy(policy: str, model_dir: str, phases: list[Phase], seed: int,
               out: Path, run: str = "", planner: bool = True) -> dict[str, Any]:
    config_path = out / f"config-{policy}.yaml"
    config_path.write_text(yaml.safe_dump(serve_config(policy, model_dir, planner),
                                          sort_keys=False))
    system = systems.System(
        name=policy, command=[str(systems.VENV_BIN / "serve"), "run", str(config_path)],
        base_url=systems.PDSERVE_URL, model_name=MODEL_A, model_dir=model_dir,
        engine_kwargs=ENGINE, config_path=str(config_path), ray_cluster=True)
    with systems.running(system, out / f"serve-{policy}{run}.log",
                         systems.find_preload_libs(), ready_timeout_s=900) as started:
        records, timeline = asyncio.run(drive(phases, seed))
    (out / f"raw-{policy}{run}.json").write_text(json.dumps({"records": records,
                                                             "timeline": timeline}))
    return {"startup_s": started.startup_s, "records": records, "timeline": timeline,
            "summary": summarize(policy, records, timeline, SLO)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="pdserve://bench")
    parser.add_argument("--phase-scale", type=float, default=1.0,
                        help="multiply every phase's length (0.2 for a smoke run)")
    parser.add_argument("--rate-scale", type=float, default=1.0,
                        help="multiply every phase's request rate (a heavier trace: the "
                        "default one no longer makes either policy scale on this box)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each policy, alternating (the report gives medians)")
    parser.add_argument("--no-planner", action="store_true",
                        help="pdserve's policy without the planner floor (its fast loop only)")
    args = parser.parse_args(argv)
    if args.rate_scale <= 0 or args.phase_scale <= 0:
        parser.error("--rate-scale and --phase-scale must be > 0")
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = systems.resolve_model_dir(args.model)
    phases = default_phases(args.phase_scale, args.rate_scale)
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in args.policies}
    for k in range(args.rounds):
        for policy in args.policies:
            suffix = f"-r{k + 1}" if args.rounds > 1 else ""
            runs[policy].append(run_policy(policy, model_dir, phases, args.seed, args.out,
                                           suffix, planner=not args.no_planner))
            print(json.dumps(runs[policy][-1]["summary"], indent=1), flush=True)
    results = {p: r[0] for p, r in runs.items()}  # the first round's timelines are plotted
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=systems.REPO_ROOT).stdout.strip()
    command = ("python -m pdserve.benchmarks.autoscale_bench "
               + " ".join(argv if argv is not None else __import__("sys").argv[1:]))
    rows = [{**run["summary"], "round": k + 1} for k in range(args.rounds)
            for p in args.policies for run in [runs[p][k]]]
    (args.out / "results.json").write_text(json.dumps(
        {"commit": commit, "phases": [asdict(p) for p in phases], "slo": SLO,
         "rounds": {p: [r["summary"] for r in rs] for p, rs in runs.items()},
         "results": results}, indent=1))
    (args.out / "report.md").write_text(report(rows, command, phases, SLO))
    plot(results, args.out / "timeline.png", SLO)
    print(report(rows, command, phases, SLO))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
