"""Graph overhead: one engine behind plain vLLM, Ray Serve LLM and pdserve, side by side.

    python -m pdserve.benchmarks.overhead_bench --rounds 3 \
        --out benchmarks/results/overhead-cpu-v1

Every system serves the same `pdserve://bench` engine (same vLLM arguments) and gets the same
load from vLLM's serving benchmark: 512-token random prompts, 32 output tokens, streamed, at
concurrency 1 (latency: TTFT, TPOT) and 8 (throughput). Rounds interleave the systems (round 1:
every system once, then round 2, ...) so a drift of the shared box hits all of them alike; the
report gives, per system and load, the median over rounds with min–max, and the median of the
per-round ratios against plain vLLM measured in the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pdserve.benchmarks import report, rounds, systems, workloads
from pdserve.benchmarks.otlp_sink import EXPORTER_ENV, OTLPReceiver
from pdserve.benchmarks.systems import System
from pdserve.benchmarks.workloads import LoadSettings
from pdserve.deployments.config.ray_serve_env import (
    HAPROXY_SWITCH_ENV,
    RAY_HAPROXY_FLAG,
    ray_start_env,
    tracing_env,
)
from pdserve.deployments.engine.placement import (
    SINGLE_PROCESS_SWITCH,
    omp_threads_bind,
    single_process_env,
)
from pdserve.deployments.engine.sleeping_wait import DEFAULT_SPIN_S, SPIN_ENV
from pdserve.kv_transfer.ports import EngineSlot

MODEL_ID = "bench"
ENGINE: dict[str, Any] = {
    "dtype": "float32", "max_model_len": 1024, "max_num_batched_tokens": 1024,
    "block_size": 32, "kv_cache_memory_bytes": 256 * 2**20, "enforce_eager": True, "seed": 0,
}
LOADS: dict[str, LoadSettings] = {
    "c1": LoadSettings(num_prompts=48, input_len=512, output_len=32, max_concurrency=1,
                       num_warmups=2),
    "c8": LoadSettings(num_prompts=64, input_len=512, output_len=32, max_concurrency=8,
                       num_warmups=8),
}
#: What each row reports, and which way is better.
COLUMNS: tuple[report.Metric, ...] = (
    report.Metric("p50_ttft_ms", "TTFT p50 ms", False),
    report.Metric("p50_tpot_ms", "TPOT p50 ms", False),
    report.Metric("p50_itl_ms", "ITL p50 ms", False),
    report.Metric("p99_itl_ms", "ITL p99 ms", False),
    report.Metric("burst_itl_pct", "gaps < 0.5 ms %", False),
    report.Metric("request_throughput", "req/s", True),
)
BASELINE = "vllm"
#: `rayllm` keeps Ray Serve LLM's default stream batching (50 ms), `rayllm-nobatch` sets 0;
#: `vllm-sleeping` is plain vLLM with the engine processes' wait pdserve's engines use
#: (`sleeping_wait.py`); `vllm-single` plain vLLM with pdserve's one-process engine
#: (`placement.single_process_env`, bound to the core pdserve's one engine gets): what the graph
#: costs over the same engine.
SYSTEM_NAMES = ("vllm", "vllm-sleeping", "vllm-single", "rayllm", "rayllm-nobatch", "pdserve",
                "pdserve-fast", "pdserve-pyproxy", "pdserve-split", "pdserve-haproxy",
                "pdserve-traced")
#: `pdserve-fast`: what `make serve` exports where Ray starts (`ray_start_env`): Ray Serve's
#: fast paths and pdserve's body ceiling for Ray's proxy, and (since overhead-cpu-v11) Ray
#: Serve's HAProxy mode through pdserve's launcher (`haproxy_guard.py`): HAProxy listens on the
#: HTTP port in place of Ray's Python proxy and sends each request straight to an ingress
#: replica's own HTTP server (direct ingress). pdserve's deployments set the fast paths for
#: themselves (app key `ray_serve_fast_path`, on by default), so `pdserve` differs from
#: `pdserve-pyproxy` only in Ray's proxy.
RAY_START_ENV = ray_start_env()
#: `pdserve-pyproxy`: the same with HAProxy mode off (`PDSERVE_HAPROXY=0`): Ray's Python proxy
#: on the HTTP port, `pdserve-fast` until overhead-cpu-v10
#: (Ray's switch said explicitly: the harness's shell may have exported `ray_start_env()`)
PYPROXY_ENV = {**ray_start_env({**os.environ, HAPROXY_SWITCH_ENV: "0"}), RAY_HAPROXY_FLAG: "0"}
#: `pdserve-haproxy`: Ray's HAProxy mode switched on alone, without pdserve's launcher or its
#: draining period, as run in overhead-cpu-v6 to -v10
HAPROXY_ENV = {**PYPROXY_ENV, RAY_HAPROXY_FLAG: "1"}
#: `pdserve-split`: `pdserve-fast` with vLLM's worker process kept beside each engine core (as
#: every pdserve engine ran before overhead-cpu-v7): what the one-process engine is worth
SPLIT_ENV = {**RAY_START_ENV, SINGLE_PROCESS_SWITCH: "0"}
#: `pdserve-traced`: `pdserve-fast` tracing every request (sampling ratio 1) to an OTLP sink in
#: the harness that counts what it gets (`otlp_sink.py`): what tracing costs the graph.
TRACE_SAMPLING_RATIO = 1.0


def traced_env(endpoint: str) -> dict[str, str]:
    return {**RAY_START_ENV, **tracing_env(endpoint, TRACE_SAMPLING_RATIO), **EXPORTER_ENV}


def pdserve_config(model: str, engine: dict[str, Any] = ENGINE) -> dict[str, Any]:
    """pdserve, colocated, one engine: the graph's shortest path (ingress → engine)."""
    return systems.serve_config_doc({"models": [{
        "model_id": MODEL_ID, "model": model, "mode": "colocated", "engine_kwargs": engine,
        "colocated": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
    }]})


def rayllm_config(model_dir: str, batching_interval_ms: float | None) -> dict[str, Any]:
    """Ray Serve LLM's OpenAI app, one engine. On CPU it needs `accelerator_config: cpu`, and
    its ingress must ask for no CPU to fit beside the engine's bundle in Ray's 2-CPU view."""
    llm: dict[str, Any] = {
        "model_loading_config": {"model_id": MODEL_ID, "model_source": model_dir},
        "accelerator_config": {"kind": "cpu"},
        "engine_kwargs": ENGINE,
        "deployment_config": {"num_replicas": 1},
        "log_engine_metrics": True,
    }
    if batching_interval_ms is not None:
        llm["experimental_configs"] = {"stream_batching_interval_ms": batching_interval_ms}
    return {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": 8000},
            "applications": [{
                "name": "rayllm", "route_prefix": "/",
                "import_path": "ray.serve.llm:build_openai_app",
                "args": {"llm_configs": [llm],
                         "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0}}},
            }]}


def build_system(name: str, model: str, model_dir: str, out: Path,
                 trace_endpoint: str = "") -> System:
    if name == "vllm":
        return systems.vllm_system(model_dir, MODEL_ID, ENGINE)
    if name == "vllm-sleeping":
        return replace(systems.vllm_system(model_dir, MODEL_ID, ENGINE), name=name,
                       env={SPIN_ENV: DEFAULT_SPIN_S})
    if name == "vllm-single":
        core = omp_threads_bind(EngineSlot(0, 0), 1, sorted(os.sched_getaffinity(0)))
        preload = ":".join(systems.find_preload_libs())  # what the server starts with
        return replace(systems.vllm_system(model_dir, MODEL_ID, ENGINE), name=name,
                       env=single_process_env(core, ld_preload=preload))
    pdserve_envs = {"pdserve": None, "pdserve-fast": RAY_START_ENV,
                    "pdserve-pyproxy": PYPROXY_ENV, "pdserve-split": SPLIT_ENV,
                    "pdserve-haproxy": HAPROXY_ENV, "pdserve-traced": None}
    if name in pdserve_envs:
        env = traced_env(trace_endpoint) if name == "pdserve-traced" else pdserve_envs[name]
        return systems.serve_run_system(
            name, pdserve_config(model), out / "configs" / "pdserve.yaml", model_dir, MODEL_ID,
            ENGINE, env)
    if name in ("rayllm", "rayllm-nobatch"):
        interval = 0 if name == "rayllm-nobatch" else None
        return systems.serve_run_system(name, rayllm_config(model_dir, interval),
                                        out / "configs" / f"{name}.yaml", model_dir, MODEL_ID,
                                        ENGINE)
    raise SystemExit(f"unknown system {name!r}; known: {', '.join(SYSTEM_NAMES)}")


def summarize(rows: list[dict[str, Any]], baseline: str = BASELINE
              ) -> dict[tuple[str, str], rounds.Cell]:
    return rounds.summarize(rows, COLUMNS, baseline)


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = meta["machine"]
    lines = [
        f"# Graph overhead: {meta.get('run_name', '')}", "",
        f"- command: `{meta['command']}`", f"- date: {meta['date']}",
        f"- commit: {meta.get('git_revision')}",
        f"- machine: {report.machine_line(m)} (systems run in the harness's session: see "
        "`systems.start`)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        f"- engine (every system): `{json.dumps(ENGINE)}`",
        "- loads: " + "; ".join(f"`{n}`: {s.num_prompts} prompts of {s.input_len} tokens, "
                                f"{s.output_len} out, concurrency {s.max_concurrency}"
                                for n, s in LOADS.items()),
        f"- rounds: {meta.get('rounds')} (systems interleaved within each round)",
        *(f"- earlier rounds ({e['rounds']}): `{e['command']}` at {e['git_revision']}, "
          f"{e['date']}" for e in meta.get("earlier", [])),
        "", "## Systems", "", *rounds.system_lines(meta), "",
        *rounds.tables(rows, COLUMNS, BASELINE),
    ]
    return "\n".join(lines) + "\n"


def write(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    rounds.write(out, meta, rows, COLUMNS, BASELINE, markdown(meta, rows))


def random_load(load: LoadSettings) -> Callable[[System], list[str]]:
    return lambda system: workloads.bench_argv("random", load, system.base_url,
                                                system.model_name, system.model_dir)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pdserve.benchmarks.overhead_bench",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    rounds.add_round_arguments(p, SYSTEM_NAMES)
    p.add_argument("--model", default="pdserve://bench")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path,
                   default=Path("benchmarks/results") / f"overhead-{datetime.now():%Y%m%d-%H%M}")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    for name in LOADS:  # bad load settings fail before any server starts
        workloads.parse_bench_args(workloads.bench_argv("random", LOADS[name], "http://x:1",
                                                        "m", "/m"))
    model_dir = systems.resolve_model_dir(args.model)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    sink = OTLPReceiver(keep=False) if "pdserve-traced" in names else None
    built = [build_system(n, args.model, model_dir, out, sink.endpoint if sink else "")
             for n in names]
    command = shlex.join(["python", "-m", "pdserve.benchmarks.overhead_bench",
                          *(argv if argv is not None else sys.argv[1:])])
    meta = {**report.run_metadata(command, systems.REPO_ROOT), "run_name": out.name,
            "rounds": args.rounds,
            "systems": {s.name: {"command": shlex.join(s.command), "env": s.env,
                                 "config": s.config_path and f"configs/{Path(s.config_path).name}"}
                        for s in built}}
    preload = systems.find_preload_libs()
    meta["preload"] = preload
    rows: list[dict[str, Any]] = []
    first = 1
    if args.more:
        rows, first = rounds.continue_report(out, meta)
    meta["rounds"] = first - 1 + args.rounds
    loads = {name: random_load(load) for name, load in LOADS.items()}
    for n in range(first, first + args.rounds):
        rounds.run_round(n, built, loads, out, meta, rows, preload, args.ready_timeout,
                         on_step=lambda: write(out, meta, rows))
    if sink is not None:
        print(f"OTLP sink: {sink.requests} export requests, {sink.bytes / 2**20:.1f} MiB of spans")
        sink.close()
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
