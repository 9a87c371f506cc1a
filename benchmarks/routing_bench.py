"""Routing benchmark: the same traces through one colocated pool under different routers.

For each router the harness writes a Serve config (only `request_router_config` differs),
starts it with `serve run` (fresh engines, empty caches), drives every trace over HTTP
(streamed `/v1/completions`, greedy), and stops it. Per request it records TTFT, latency, the
prompt/output token ids and the engine's own prefix-cache hit
(`usage.prompt_tokens_details.cached_tokens`); the oracle bound is computed from the trace.

    python -m pdserve.benchmarks.routing_bench --out benchmarks/results/routing-cpu-v1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import random
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import yaml
from tqdm import tqdm

from pdserve.benchmarks import report, systems
from pdserve.benchmarks.routing_workloads import (
    TRACES,
    Observed,
    Session,
    TraceSettings,
    oracle_hit_tokens,
)
from pdserve.benchmarks.sse import stream_chunks
from pdserve.routing.block_hashes import BlockHasher

PREFIX_AWARE_ROUTER = "pdserve.routing.router:PrefixAwareRouter"
#: pdserve's default weights as the recorded runs used them, pinned here (not imported) so a
#: later change of the defaults does not change what these names reproduce.
PINNED_WEIGHTS: dict[str, float] = {"prefix": 2.0, "queue": 1.0, "tokens": 1.0,
                                    "kv_headroom": 0.5, "cache_headroom": 0.0, "session": 1.0,
                                    "session_spread": 0.0, "adapter": 1.0}


def prefix_aware(weights: dict[str, float]) -> dict[str, Any]:
    """pdserve's prefix-aware router with these weights (a map replaces the defaults whole)."""
    return {"request_router_class": PREFIX_AWARE_ROUTER,
            "request_router_kwargs": {"weights": weights}}


ROUTERS: dict[str, dict[str, Any]] = {
    "pdserve": {"request_router_class": PREFIX_AWARE_ROUTER},
    # The same router with the opt-in cache-fill term (how `routing-cpu-v5` ran "pdserve").
    "pdserve_cache": prefix_aware({"prefix": 2.0, "queue": 1.0, "tokens": 1.0,
                                   "kv_headroom": 0.5, "cache_headroom": 0.5, "session": 1.0}),
    # The same router with the opt-in `session_spread` (how `routing-cpu-v9` and `-v10` ran
    # "pdserve", whose default it was for one commit).
    "pdserve_spread": prefix_aware({**PINNED_WEIGHTS, "session_spread": 1.0}),
    # Spelled out without `session_spread` (today's default; `routing-cpu-v9`'s name for it).
    "pdserve_nospread": prefix_aware(PINNED_WEIGHTS),
    # Ray Serve's default (what a deployment gets when it names no router).
    "pow2": {"request_router_class":
             "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter"},
    # Ray Serve LLM's stable prefix-aware router (text prefix tree; needs pyarrow).
    "prefix_cache_affinity": {"request_router_class":
                              "ray.serve.llm.request_router:PrefixCacheAffinityRouter"},
}
BLOCK_SIZE = 32
MODEL_ID = "bench"


def serve_config(model: str, replicas: int, gpu_blocks: int, router: dict[str, Any],
                 max_model_len: int) -> dict[str, Any]:
    """One colocated pool; the router is the only thing that changes between runs."""
    engine = {"dtype": "float32", "max_model_len": max_model_len,
              "max_num_batched_tokens": max_model_len, "block_size": BLOCK_SIZE,
              "num_gpu_blocks_override": gpu_blocks, "kv_cache_memory_bytes": 512 * 2**20,
              "enforce_eager": True, "seed": 0}
    return systems.serve_config_doc({"models": [{
        "model_id": MODEL_ID, "model": model, "mode": "colocated", "engine_kwargs": engine,
        "colocated": {"num_replicas": replicas,
                      "ray_actor_options": {"num_cpus": 2 / (replicas + 1)},
                      "request_router_config": router},
    }]})


async def one_request(http: httpx.AsyncClient, prompt: str, max_tokens: int,
                      session_id: str | None) -> tuple[Observed, float, float, str]:
    body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True},
            "return_token_ids": True, "ignore_eos": True}
    headers = {"x-session-id": session_id} if session_id else {}
    start = time.perf_counter()
    obs = Observed(start=start, prompt_ids=[])
    ttft, text = float("nan"), ""
    async for chunk in stream_chunks(http, "/v1/completions", body, headers):
        for choice in chunk.get("choices", []):
            if choice.get("prompt_token_ids"):
                obs.prompt_ids = list(choice["prompt_token_ids"])
            if choice.get("token_ids"):
                if not obs.output_ids:
                    ttft = time.perf_counter() - start
                obs.output_ids.extend(choice["token_ids"])
            text += choice.get("text") or ""
        usage = chunk.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        obs.cached_tokens = int(details.get("cached_tokens") or obs.cached_tokens)
    return obs, ttft, time.perf_counter() - start, text


async def drive(base_url: str, trace: list[Session], concurrency: int, max_tokens: int,
                progress: tqdm, think_s: float = 0.0, seed: int = 0,
                rate: float = 0.0) -> list[dict[str, Any]]:
    """Sessions run concurrently (at most `concurrency`, each a user), each session's turns in
    order; with `think_s` > 0 a user waits an exponential time of that mean (seeded per
    session) between an answer and the next turn, as a person reading and typing does, so
    the next turn does not find the replica that just answered it freed by that answer.

    With `rate` > 0 the load is open: sessions start at Poisson times of that rate (seeded),
    whatever is still running, and `concurrency` does not cap them. A closed loop hands each
    finished request's slot to the next one, so every router keeps the same number in flight
    and only the spread of latencies around the same mean can differ (Little's law); open
    arrivals let a router's imbalance show as queueing."""
    limit: Any = asyncio.Semaphore(concurrency) if rate <= 0 else contextlib.nullcontext()
    starts = session_starts(len(trace), rate, seed)
    records: list[dict[str, Any]] = []

    async def run_session(session: Session, at: float, http: httpx.AsyncClient) -> None:
        pauses = think_times(session, think_s, seed)
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        async with limit:
            prompt = ""
            for n, turn in enumerate(session.turns):
                if n:
                    await asyncio.sleep(pauses[n - 1])
                prompt += turn
                obs, ttft, e2e, answer = await one_request(http, prompt, max_tokens,
                                                           session.session_id)
                records.append({"obs": obs, "ttft": ttft, "e2e": e2e, "group": session.group})
                prompt += answer
                progress.update(1)

    # no connection cap: under open load a wait for a pooled connection would count as TTFT
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(run_session(s, started + t, http)
                               for s, t in zip(trace, starts, strict=True)))
        for r in records:
            r["duration"] = time.perf_counter() - started
    return records


def think_times(session: Session, think_s: float, seed: int) -> list[float]:
    """Pauses before turns 2..n of `session`: exponential with mean `think_s`, reproducible
    from the seed and the session's name (0 when `think_s` is 0)."""
    if think_s <= 0:
        return [0.0] * max(0, len(session.turns) - 1)
    rng = random.Random(f"{seed}:{session.session_id or session.group}")
    return [rng.expovariate(1 / think_s) for _ in session.turns[1:]]


def session_starts(sessions: int, rate: float, seed: int) -> list[float]:
    """When each session starts (s from the run's start): all at once for a closed loop
    (`rate` 0), else a Poisson process of `rate` sessions/s, reproducible from the seed."""
    if rate <= 0:
        return [0.0] * sessions
    rng = random.Random(f"{seed}:arrivals")
    return list(itertools.accumulate(rng.expovariate(rate) for _ in range(sessions)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(router: str, workload: str, records: list[dict[str, Any]],
              hasher: BlockHasher) -> dict[str, Any]:
    observed = [r["obs"] for r in records]
    prompt_tokens = sum(len(o.prompt_ids) for o in observed)
    cached = sum(o.cached_tokens for o in observed)
    oracle = sum(oracle_hit_tokens(observed, BLOCK_SIZE, hasher))
    ttfts = [r["ttft"] * 1000 for r in records]
    duration = max(r["duration"] for r in records)
    return {
        "router": router, "workload": workload, "requests": len(records),
        "prompt_tokens": prompt_tokens, "cached_tokens": cached,
        "hit_rate": cached / prompt_tokens, "oracle_hit_rate": oracle / prompt_tokens,
        "hit_vs_oracle": cached / oracle if oracle else None,
        "ttft_p50_ms": statistics.median(ttfts), "ttft_p99_ms": percentile(ttfts, 99),
        "ttft_mean_ms": statistics.fmean(ttfts),
        "e2e_p50_ms": statistics.median(r["e2e"] * 1000 for r in records),
        "e2e_mean_ms": statistics.fmean(r["e2e"] * 1000 for r in records),
        "ttft_ms": [round(t, 1) for t in ttfts],  # in completion order, for distributions
        "duration_s": duration, "req_per_s": len(records) / duration,
        "output_tok_per_s": sum(len(o.output_ids) for o in observed) / duration,
    }


def _median_span(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    median, low, high = report.spread(values)
    if len(values) == 1:
        return fmt.format(median)
    return f"{fmt.format(median)} ({fmt.format(low)}–{fmt.format(high)})"


def table(rows: list[dict[str, Any]]) -> str:
    """Per (workload, router): medians over rounds (min–max), and the median of the ratios to
    `pow2` measured in the same round (fresh engines per router and round)."""
    head = ("| workload | router | rounds | hit rate | oracle | hit/oracle | TTFT p50 ms "
            "| TTFT p99 ms | TTFT mean ms | req/s | TTFT p50 vs pow2 | req/s vs pow2 |")
    lines = [head, "|" + "---|" * 12]
    keys = list(dict.fromkeys((r["workload"], r["router"]) for r in rows))
    for workload, router in keys:
        mine = [r for r in rows if (r["workload"], r["router"]) == (workload, router)]
        pairs = same_round_pairs(rows, workload, router, "pow2")
        speedups = [b["ttft_p50_ms"] / a["ttft_p50_ms"] for a, b in pairs]
        tputs = [a["req_per_s"] / b["req_per_s"] for a, b in pairs]
        col = {k: [r[k] for r in mine if r.get(k) is not None] for k in (
            "hit_rate", "oracle_hit_rate", "hit_vs_oracle", "ttft_p50_ms", "ttft_p99_ms",
            "ttft_mean_ms", "req_per_s")}
        lines.append(" | ".join([
            f"| {workload}", router, str(len(mine)),
            _median_span([100 * v for v in col["hit_rate"]], "{:.1f}%"),
            _median_span([100 * v for v in col["oracle_hit_rate"]], "{:.1f}%"),
            _median_span([100 * v for v in col["hit_vs_oracle"]], "{:.1f}%"),
            _median_span(col["ttft_p50_ms"], "{:.0f}"), _median_span(col["ttft_p99_ms"], "{:.0f}"),
            _median_span(col["ttft_mean_ms"], "{:.0f}"),
            _median_span(col["req_per_s"], "{:.2f}"), _median_span(speedups, "{:.2f}x"),
            _median_span(tputs, "{:.2f}x")]) + " |")
    return "\n".join(lines)


def same_round_pairs(rows: list[dict[str, Any]], workload: str, router: str,
                     rival: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(`router`'s row, `rival`'s row) of `workload` per round both ran (fresh engines per
    router and round, so ratios are taken within a round)."""
    theirs = {r.get("round", 1): r for r in rows
              if (r["workload"], r["router"]) == (workload, rival)}
    return [(r, theirs[r.get("round", 1)]) for r in rows
            if (r["workload"], r["router"]) == (workload, router) and r.get("round", 1) in theirs]


def head_to_head(rows: list[dict[str, Any]], router: str, rival: str) -> str:
    """`router` against `rival`, per workload: the median (min–max) of same-round ratios, the
    rival's TTFT over the router's (> 1: the router is faster) and the router's requests/s over
    the rival's; '' when either did not run."""
    lines = [f"| workload | rounds | {rival} TTFT p50 / {router}'s | mean / mean | p99 / p99 "
             f"| {router} req/s / {rival}'s |", "|" + "---|" * 6]
    for workload in dict.fromkeys(r["workload"] for r in rows):
        pairs = same_round_pairs(rows, workload, router, rival)
        if not pairs:
            continue
        ratios = [_median_span([b[key] / a[key] for a, b in pairs if a.get(key) and b.get(key)],
                               "{:.2f}x")
                  for key in ("ttft_p50_ms", "ttft_mean_ms", "ttft_p99_ms")]
        tput = _median_span([a["req_per_s"] / b["req_per_s"] for a, b in pairs], "{:.2f}x")
        lines.append(f"| {workload} | {len(pairs)} | " + " | ".join([*ratios, tput]) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def seconds(text: str) -> float:
    """A finite duration >= 0 (argparse type)."""
    return _finite_at_least_zero(text, "seconds")


def per_second(text: str) -> float:
    """A finite rate >= 0 (argparse type)."""
    return _finite_at_least_zero(text, "sessions per second")


def _finite_at_least_zero(text: str, unit: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of {unit} >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", default="pdserve://bench")
    p.add_argument("--routers", default="pdserve,pow2,prefix_cache_affinity",
                   help=f"comma-separated, from: {', '.join(ROUTERS)}")
    p.add_argument("--workloads", default=",".join(TRACES))
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--gpu-blocks", type=int, default=192,
                   help="KV blocks per engine: smaller than the trace's working set, as on a "
                        "busy GPU, so where a prefix lives matters")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--think-s", type=seconds, default=0.0,
                   help="mean think time (s, exponential) between a session's answer and its "
                        "next turn; 0: the next turn follows at once")
    p.add_argument("--rate", type=per_second, default=0.0,
                   help="open load: sessions start at Poisson times of this rate (sessions "
                        "per s, seeded; a session's turns still follow one another) and "
                        "--concurrency no longer caps them; 0: a closed loop of --concurrency "
                        "users")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every router this many times, interleaved (round 1: each router "
                        "in turn on fresh engines, then round 2...); the report gives medians")
    p.add_argument("--trace", action="append", default=[], metavar="FIELD=INT",
                   help="override a TraceSettings field, e.g. --trace groups=4 (repeatable)")
    p.add_argument("--no-preload", action="store_true")
    p.add_argument("--render", action="store_true",
                   help="run nothing: write --out's report.md again from its results.json")
    return p


def trace_settings(args: argparse.Namespace) -> TraceSettings:
    overrides = {}
    for item in args.trace:
        key, _, value = item.partition("=")
        if key not in TraceSettings.__dataclass_fields__:
            raise SystemExit(f"--trace {item}: unknown field; known: "
                             f"{', '.join(TraceSettings.__dataclass_fields__)}")
        overrides[key] = int(value)
    return TraceSettings(**{"seed": args.seed, **overrides})


def run_router(args: argparse.Namespace, router: str, n: int, traces: dict[str, list[Session]],
               hasher: BlockHasher, preload: list[str], meta: dict[str, Any],
               rows: list[dict[str, Any]]) -> None:
    """One router on fresh engines: every trace, a row each (tagged with round `n`)."""
    config = serve_config(args.model, args.replicas, args.gpu_blocks, ROUTERS[router],
                          args.max_model_len)
    config_path = args.out / f"serve-{router}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    system = systems.pdserve_system(router, config_path)
    systems.wait_for_no_ray(600)  # the previous router's cluster is gone
    with systems.running(system, args.out / f"{router}.log", preload) as started:
        meta["startup_s"].setdefault(router, []).append(round(started.startup_s, 1))
        for workload, trace in traces.items():
            total = sum(len(s.turns) for s in trace)
            with tqdm(total=total, desc=f"round {n} {router}/{workload}") as bar:
                records = asyncio.run(drive(system.base_url, trace, args.concurrency,
                                            args.max_tokens, bar, args.think_s, args.seed,
                                            args.rate))
            rows.append({**summarize(router, workload, records, hasher), "round": n})
            print(json.dumps(rows[-1]), flush=True)
            (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                              indent=2, default=str))


def write_report(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """`report.md` from a run's rows: the table against power-of-two, then pdserve against
    Ray Serve LLM's router where both ran."""
    text = table(rows)
    versus = head_to_head(rows, "pdserve", "prefix_cache_affinity")
    if versus:
        text += f"\n\nAgainst Ray Serve LLM's router, same rounds:\n\n{versus}"
    (out / "report.md").write_text(f"# Routing benchmark\n\n- command: `{meta['command']}`\n"
                                   f"- date: {meta['date']}\n\n{text}\n")
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:  # no run: the report again from the run's recorded rows
        recorded = args.out / "results.json"
        if not recorded.is_file():
            build_parser().error(f"--render: no {recorded} to render")
        run = json.loads(recorded.read_text())
        print(write_report(args.out, run["meta"], run["rows"]))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    settings = trace_settings(args)
    traces = {w: TRACES[w](settings) for w in args.workloads.split(",")}
    hasher = BlockHasher(BLOCK_SIZE)
    preload = [] if args.no_preload else systems.find_preload_libs()
    rows: list[dict[str, Any]] = []
    command = " ".join(["python -m pdserve.benchmarks.routing_bench", *sys.argv[1:]])
    meta = report.run_metadata(command, systems.REPO_ROOT)
    meta.update(trace_settings=asdict(settings), args={k: str(v) for k, v in vars(args).items()},
                preload=preload, startup_s={})
    for n in range(1, args.rounds + 1):
        for router in args.routers.split(","):
            run_router(args, router, n, traces, hasher, preload, meta, rows)
    rows.sort(key=lambda r: (list(traces).index(r["workload"]), r["router"], r["round"]))
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2,
                                                      default=str))
    print(write_report(args.out, meta, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
