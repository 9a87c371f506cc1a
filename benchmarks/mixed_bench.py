"""PD vs colocated on equal hardware, on a mixed workload where disaggregation should pay.

    python -m pdserve.benchmarks.mixed_bench --rounds 3 --out benchmarks/results/mixed-cpu-v1

Two engines per system, one core each (pdserve pins each engine's threads to its own core):
`pd` runs one prefill and one decode engine, `colocated` two engines that do both. The load is
open-loop (Poisson arrivals) and mixes two kinds of requests, half each, in a seeded random
order: *long prompts* (`--long-prompt` tokens, `--long-prompt-output` out) and *long decodes*
(`--short-prompt` tokens, `--long-decode-output` out). In a colocated engine a long prompt's
prefill chunks share steps with the running decodes, so their inter-token gaps jump by a
chunk's time; in PD the decode engine only receives the prompt's KV (and prefills the short
prompts itself: below `local_prefill_below_tokens`). What it costs: one engine does all long
prefills instead of two.

Reported per system (median over rounds, min–max, and same-round ratios to `colocated`): ITL
p99 over all streams and over the long decodes alone, TTFT p50/p99 (all, and of the long
prompts), and goodput: requests per second that met both `--slo-ttft-ms` and `--slo-itl-ms`
(every gap of the stream within it), from vLLM's per-request results.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from pdserve.benchmarks import report, rounds, systems, workloads
from pdserve.benchmarks.systems import System
from pdserve.benchmarks.workloads import LoadSettings
from pdserve.deployments.config.ray_serve_env import ray_start_env

MODEL_ID = "bench"
#: `max_num_batched_tokens` 2048: vLLM's default for its API server on CPU, so a long prompt is
#: prefilled in one engine step (`--max-num-batched-tokens` for smaller chunks).
ENGINE: dict[str, Any] = {
    "dtype": "float32", "max_model_len": 2048, "max_num_batched_tokens": 2048,
    "block_size": 32, "kv_cache_memory_bytes": 512 * 2**20, "enforce_eager": True, "seed": 0,
}
#: `rayllm-pd`: Ray Serve LLM's own PD app (`build_pd_openai_app`), vLLM's stock NIXL connector.
SYSTEM_NAMES = ("pd", "colocated", "rayllm-pd")
BASELINE = "colocated"
LOAD = "mixed"
COLUMNS: tuple[report.Metric, ...] = (
    report.Metric("p99_itl_ms", "ITL p99 ms", False),
    report.Metric("long_decode_p99_itl_ms", "ITL p99 ms, long decodes", False),
    report.Metric("p50_itl_ms", "ITL p50 ms", False),
    report.Metric("long_decode_worst_gap_p50_ms", "worst gap per long decode, p50 ms", False),
    report.Metric("long_decode_worst_gap_p90_ms", "worst gap per long decode, p90 ms", False),
    report.Metric("p50_ttft_ms", "TTFT p50 ms", False),
    report.Metric("p99_ttft_ms", "TTFT p99 ms", False),
    report.Metric("long_prompt_p50_ttft_ms", "TTFT p50 ms, long prompts", False),
    report.Metric("slo_goodput", "goodput req/s (TTFT+ITL SLO)", True),
    report.Metric("slo_met_pct", "met SLO %", True),
    report.Metric("request_throughput", "req/s", True),
)


def pd_config(model: str, local_prefill_below_tokens: int,
              engine: dict[str, Any] = ENGINE) -> dict[str, Any]:
    one_core = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}}
    return systems.serve_config_doc({"models": [{
        "model_id": MODEL_ID, "model": model, "mode": "pd", "engine_kwargs": engine,
        "prefill": one_core, "decode": one_core,
        "routing": {"local_prefill_below_tokens": local_prefill_below_tokens},
    }]})


def colocated_config(model: str, engine: dict[str, Any] = ENGINE) -> dict[str, Any]:
    return systems.serve_config_doc({"models": [{
        "model_id": MODEL_ID, "model": model, "mode": "colocated", "engine_kwargs": engine,
        "colocated": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 1}},
    }]})


def rayllm_pd_config(model_dir: str, engine: dict[str, Any] = ENGINE) -> dict[str, Any]:
    """Ray Serve LLM's PD app on CPU: each side an `LLMConfig` with `accelerator_config: cpu`
    (Ray's default is a GPU), vLLM's `NixlConnector` with a CPU buffer, its replica actor at
    `num_cpus: 0` beside the engine's 1-CPU bundle, its own core for the engine's threads
    (`VLLM_CPU_OMP_THREADS_BIND`: vLLM's `auto` binds every engine to both cores here), and
    the ingress at `num_cpus: 0`; two engines fit Ray's 2-CPU view."""
    def side(role: str, core: int) -> dict[str, Any]:
        return {
            "model_loading_config": {"model_id": MODEL_ID, "model_source": model_dir},
            "accelerator_config": {"kind": "cpu"},
            "engine_kwargs": {**engine, "kv_transfer_config": {
                "kv_connector": "NixlConnector", "kv_role": role, "kv_buffer_device": "cpu"}},
            "deployment_config": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}},
            "runtime_env": {"env_vars": {"VLLM_CPU_OMP_THREADS_BIND": str(core),
                                         "RAY_worker_niceness": "0"}},
            "log_engine_metrics": True,
        }
    return {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": 8000},
            "applications": [{
                "name": "rayllm-pd", "route_prefix": "/",
                "import_path": "ray.serve.llm:build_pd_openai_app",
                "args": {"prefill_config": side("kv_producer", 0),
                         "decode_config": side("kv_consumer", 1),
                         "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0}}},
            }]}


def engine_of(args: argparse.Namespace) -> dict[str, Any]:
    return {**ENGINE, "max_num_batched_tokens": args.max_num_batched_tokens}


def build_system(name: str, args: argparse.Namespace, model_dir: str, out: Path) -> System:
    engine = engine_of(args)
    env: dict[str, str] = {}
    if name == "rayllm-pd":
        config = rayllm_pd_config(model_dir, engine)
    elif name == "pd":
        config = pd_config(args.model, args.local_prefill_below_tokens, engine)
        env = ray_start_env()  # Ray's proxy too, as `make serve` starts it
    elif name == "colocated":
        config = colocated_config(args.model, engine)
        env = ray_start_env()
    else:
        raise SystemExit(f"unknown system {name!r}; known: {', '.join(SYSTEM_NAMES)}")
    return systems.serve_run_system(name, config, out / "configs" / f"{name}.yaml", model_dir,
                                    MODEL_ID, engine, env)


def prompt_text(tokenizer: Any, rng: random.Random, tokens: int) -> str:
    """Random words cut to `tokens` tokens (no two prompts share a prefix: nothing is
    served from a prefix cache)."""
    from pdserve.tiny_model import WORDS

    text = " ".join(rng.choice(WORDS) for _ in range(tokens))
    ids = tokenizer(text, add_special_tokens=False).input_ids[:tokens]
    return tokenizer.decode(ids)


def write_dataset(path: Path, model_dir: str, args: argparse.Namespace) -> dict[str, int]:
    """The requests of a round, as vLLM's `custom` dataset (JSONL: prompt, output_tokens),
    the same for every system; returns how many of each kind."""
    from vllm.tokenizers import get_tokenizer

    tokenizer = get_tokenizer(model_dir)
    rng = random.Random(args.seed)
    kinds = {"long_prompt": 0, "long_decode": 0}
    with open(path, "w") as f:
        for _ in range(args.num_prompts + args.num_warmups):
            if rng.random() < 0.5:
                kind, length, out = "long_prompt", args.long_prompt, args.long_prompt_output
            else:
                kind, length, out = "long_decode", args.short_prompt, args.long_decode_output
            kinds[kind] += 1
            f.write(json.dumps({"prompt": prompt_text(tokenizer, rng, length),
                                "output_tokens": out}) + "\n")
    return kinds


def bench_argv(system: System, dataset: Path, args: argparse.Namespace) -> list[str]:
    load = LoadSettings(num_prompts=args.num_prompts, request_rate=args.request_rate,
                        max_concurrency=None, slo_ttft_ms=args.slo_ttft_ms,
                        num_warmups=args.num_warmups, seed=args.seed)
    return workloads.common_args(load, system.base_url, system.model_name,
                                 system.model_dir) + [
        "--dataset-name", "custom", "--dataset-path", str(dataset),
        "--custom-output-len", "-1", "--skip-chat-template",
    ]  # fmt: skip


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def mixed_summary(result: dict[str, Any], split_at_tokens: int, slo_ttft_ms: float,
                  slo_itl_ms: float) -> dict[str, Any]:
    """Per-kind latencies and goodput under a TTFT + ITL SLO, from vLLM's per-request lists
    (a request is long-prompt if its prompt has at least `split_at_tokens` tokens)."""
    ttfts, itls = result.get("ttfts") or [], result.get("itls") or []
    lens, errors = result.get("input_lens") or [], result.get("errors") or []
    long_prompt_ttfts, long_decode_gaps, worst, met = [], [], [], 0
    for i, ttft in enumerate(ttfts):
        if i < len(errors) and errors[i]:
            continue
        gaps = itls[i] if i < len(itls) else []
        if lens[i] >= split_at_tokens:
            long_prompt_ttfts.append(1000 * ttft)
        else:
            long_decode_gaps += [1000 * g for g in gaps]
            worst.append(1000 * max(gaps, default=0.0))
        if 1000 * ttft <= slo_ttft_ms and all(1000 * g <= slo_itl_ms for g in gaps):
            met += 1
    duration = result.get("duration") or 0
    return {
        "long_decode_p99_itl_ms": _pct(long_decode_gaps, 99),
        "long_decode_worst_gap_p50_ms": _pct(worst, 50),
        "long_decode_worst_gap_p90_ms": _pct(worst, 90),
        "long_prompt_p50_ttft_ms": (statistics.median(long_prompt_ttfts)
                                    if long_prompt_ttfts else None),
        "slo_goodput": met / duration if duration else None,
        "slo_met_pct": 100 * met / len(ttfts) if ttfts else None,
    }


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    a = meta["load"]
    lines = [
        f"# PD vs colocated, mixed workload: {meta.get('run_name', '')}", "",
        f"- command: `{meta['command']}`", f"- date: {meta['date']}",
        f"- commit: {meta.get('git_revision')}",
        f"- machine: {report.machine_line(meta['machine'])}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        f"- engine (every engine of every system): `{json.dumps(meta['engine'])}`",
        f"- load: {a['num_prompts']} requests (+{a['num_warmups']} warm-up), Poisson at "
        f"{a['request_rate']} req/s, open loop; half long prompts ({a['long_prompt']} tokens, "
        f"{a['long_prompt_output']} out), half long decodes ({a['short_prompt']} tokens, "
        f"{a['long_decode_output']} out), seeded order {meta.get('kinds')}",
        f"- SLO: TTFT ≤ {a['slo_ttft_ms']:g} ms and every inter-token gap ≤ "
        f"{a['slo_itl_ms']:g} ms",
        f"- rounds: {meta.get('rounds')} (systems interleaved within each round)",
        *(f"- earlier rounds ({e['rounds']}): `{e['command']}` at {e['git_revision']}, "
          f"{e['date']}" for e in meta.get("earlier", [])),
        "", "## Systems", "", *rounds.system_lines(meta), "",
        *rounds.tables(rows, COLUMNS, BASELINE),
    ]
    return "\n".join(lines) + "\n"


def rerender(out: Path) -> None:
    """Recompute every row's summary from the raw vLLM results in `out` (after a change of
    what is summarized) and rewrite the report."""
    meta = json.loads((out / "report.json").read_text())
    rows, load = meta.pop("results"), meta["load"]
    meta.pop("summary", None)
    split = (load["short_prompt"] + load["long_prompt"]) // 2
    for row in rows:
        raw = out / "raw" / f"{row['system']}__{row['load']}__r{row['round']}.json"
        if row.get("summary") and raw.exists():
            result = json.loads(raw.read_text())
            row["summary"] = rounds.step_summary(result, lambda r: mixed_summary(
                r, split, load["slo_ttft_ms"], load["slo_itl_ms"]))
    rounds.write(out, meta, rows, COLUMNS, BASELINE, markdown(meta, rows))


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    """The model, the mix, the engine's step size and the SLO: one definition for this benchmark
    and `mixed_sim_scan`, which simulates it."""
    p.add_argument("--model", default="pdserve://bench")
    p.add_argument("--num-prompts", type=int, default=80)
    p.add_argument("--long-prompt", type=int, default=1536)
    p.add_argument("--long-prompt-output", type=int, default=16)
    p.add_argument("--short-prompt", type=int, default=64)
    p.add_argument("--long-decode-output", type=int, default=256)
    p.add_argument("--local-prefill-below-tokens", type=int, default=256,
                   help="PD: prompts with fewer uncached tokens prefill on the decode engine")
    p.add_argument("--max-num-batched-tokens", type=int, default=ENGINE["max_num_batched_tokens"],
                   help="tokens per engine step (vLLM's CPU default for its API server: 2048)")
    p.add_argument("--slo-ttft-ms", type=float, default=3000.0)
    p.add_argument("--slo-itl-ms", type=float, default=100.0)


def check_workload(args: argparse.Namespace) -> None:
    if args.short_prompt >= args.local_prefill_below_tokens or (
            args.long_prompt < args.local_prefill_below_tokens):
        raise SystemExit("--local-prefill-below-tokens must lie between --short-prompt and "
                         "--long-prompt: short prompts prefill on decode, long ones remote")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pdserve.benchmarks.mixed_bench",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    rounds.add_round_arguments(p, SYSTEM_NAMES)
    p.add_argument("--rerender", action="store_true",
                   help="only rewrite the report in --out from its raw results")
    add_workload_arguments(p)
    p.add_argument("--num-warmups", type=int, default=2)
    p.add_argument("--request-rate", type=float, default=1.0, help="Poisson, requests/s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path,
                   default=Path("benchmarks/results") / f"mixed-{datetime.now():%Y%m%d-%H%M}")
    args = p.parse_args(argv)
    if args.rerender:
        rerender(args.out)
        print((args.out / "report.md").read_text())
        return
    check_workload(args)
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    model_dir = systems.resolve_model_dir(args.model)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    dataset = out / "dataset.jsonl"
    kinds = write_dataset(dataset, model_dir, args)
    workloads.parse_bench_args(bench_argv(systems.vllm_system(model_dir, MODEL_ID, {}),
                                          dataset, args))  # bad flags fail before any start
    built = [build_system(n, args, model_dir, out) for n in names]
    command = shlex.join(["python", "-m", "pdserve.benchmarks.mixed_bench",
                          *(argv if argv is not None else sys.argv[1:])])
    meta = {**report.run_metadata(command, systems.REPO_ROOT), "run_name": out.name,
            "rounds": args.rounds, "kinds": kinds, "engine": engine_of(args),
            "load": {k: getattr(args, k) for k in (
                "num_prompts", "num_warmups", "request_rate", "long_prompt",
                "long_prompt_output", "short_prompt", "long_decode_output", "slo_ttft_ms",
                "slo_itl_ms", "local_prefill_below_tokens")},
            "systems": {s.name: {"command": shlex.join(s.command), "env": s.env,
                                 "config": s.config_path and f"configs/{Path(s.config_path).name}"}
                        for s in built}}
    preload = systems.find_preload_libs()
    rows: list[dict[str, Any]] = []
    first = 1
    if args.more:
        rows, first = rounds.continue_report(out, meta)
    meta["rounds"] = first - 1 + args.rounds
    split = (args.short_prompt + args.long_prompt) // 2

    def extra(result: dict[str, Any]) -> dict[str, Any]:
        return mixed_summary(result, split, args.slo_ttft_ms, args.slo_itl_ms)

    def write() -> None:
        rounds.write(out, meta, rows, COLUMNS, BASELINE, markdown(meta, rows))

    loads = {LOAD: lambda system: bench_argv(system, dataset, args)}
    for n in range(first, first + args.rounds):
        rounds.run_round(n, built, loads, out, meta, rows, preload, args.ready_timeout,
                         extra=extra, on_step=write)
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
