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
import shlex
import statistics
import sys
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from pdserve.benchmarks import process_cpu, report, systems, workloads
from pdserve.benchmarks.systems import System
from pdserve.benchmarks.workloads import LoadSettings
from pdserve.deployments.config.ray_serve_env import RAY_SERVE_FAST_PATH_ENV

MODEL_ID = "bench"
ENGINE: dict[str, Any] = {
    "dtype": "float32", "max_model_len": 1024, "max_num_batched_tokens": 1024,
    "block_size": 32, "kv_cache_memory_bytes": 256 * 2**20, "enforce_eager": True, "seed": 0,
}
LOADS: dict[str, LoadSettings] = {
    "c1": LoadSettings(num_prompts=16, input_len=512, output_len=32, max_concurrency=1,
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
#: `rayllm` keeps Ray Serve LLM's default stream batching (50 ms), `rayllm-nobatch` sets 0.
SYSTEM_NAMES = ("vllm", "rayllm", "rayllm-nobatch", "pdserve", "pdserve-fast")
#: Ray Serve's fast paths in the environment of every Ray process (`pdserve-fast`), as
#: `make serve` sets them. pdserve's deployments set them for themselves (app key
#: `ray_serve_fast_path`, on by default), so `pdserve` differs from it only in Ray's proxy.
FAST_PATH_ENV = dict(RAY_SERVE_FAST_PATH_ENV)


def pdserve_config(model: str) -> dict[str, Any]:
    """pdserve, colocated, one engine: the graph's shortest path (ingress → engine)."""
    return systems.serve_config_doc({"models": [{
        "model_id": MODEL_ID, "model": model, "mode": "colocated", "engine_kwargs": ENGINE,
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


def serve_run_system(name: str, config: dict[str, Any], config_path: Path,
                     model_dir: str, env: dict[str, str] | None = None) -> System:  # fmt: skip
    """A Ray Serve app started with `serve run`, every Ray worker at normal priority."""
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return System(name=name, command=[str(systems.VENV_BIN / "serve"), "run", str(config_path)],
                  base_url=systems.PDSERVE_URL, model_name=MODEL_ID, model_dir=model_dir,
                  engine_kwargs=ENGINE, config_path=str(config_path), ray_cluster=True,
                  env={"RAY_worker_niceness": "0", **(env or {})})


def build_system(name: str, model: str, model_dir: str, out: Path) -> System:
    if name == "vllm":
        return systems.vllm_system(model_dir, MODEL_ID, ENGINE)
    if name in ("pdserve", "pdserve-fast"):
        return serve_run_system(name, pdserve_config(model), out / "configs" / "pdserve.yaml",
                                model_dir, FAST_PATH_ENV if name == "pdserve-fast" else None)
    if name in ("rayllm", "rayllm-nobatch"):
        interval = 0 if name == "rayllm-nobatch" else None
        return serve_run_system(name, rayllm_config(model_dir, interval),
                                out / "configs" / f"{name}.yaml", model_dir)
    raise SystemExit(f"unknown system {name!r}; known: {', '.join(SYSTEM_NAMES)}")


@dataclass(frozen=True)
class Cell:
    """One (system, load) over all rounds: median and range of each column, and the median
    (range) of the per-round ratio against the baseline."""

    median: dict[str, float | None]
    low: dict[str, float | None]
    high: dict[str, float | None]
    ratio: dict[str, float | None]
    ratio_low: dict[str, float | None]
    ratio_high: dict[str, float | None]
    rounds: int


def _stats(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def summarize(rows: list[dict[str, Any]], baseline: str = BASELINE) -> dict[tuple[str, str], Cell]:
    """Medians over rounds, and medians of same-round ratios against `baseline`."""
    ok = [r for r in rows if r.get("summary")]
    base = {(r["round"], r["load"]): r["summary"] for r in ok if r["system"] == baseline}
    cells: dict[tuple[str, str], Cell] = {}
    for key in sorted({(r["system"], r["load"]) for r in ok}):
        mine = [r for r in ok if (r["system"], r["load"]) == key]
        med, low, high, rat, rat_low, rat_high = {}, {}, {}, {}, {}, {}
        for c in COLUMNS:
            values = [r["summary"][c.key] for r in mine if r["summary"].get(c.key) is not None]
            med[c.key], low[c.key], high[c.key] = _stats(values)
            ratios = []
            for r in mine:
                b = base.get((r["round"], r["load"]))
                ratio = report._ratio(r["summary"].get(c.key), b and b.get(c.key), c.key)
                if ratio is not None:
                    ratios.append(ratio)
            rat[c.key], rat_low[c.key], rat_high[c.key] = _stats(ratios)
        cells[key] = Cell(med, low, high, rat, rat_low, rat_high, len(mine))
    return cells


def _span(mid: float | None, low: float | None, high: float | None, unit: str = "") -> str:
    if mid is None:
        return "–"
    return f"{mid:.2f}{unit} ({low:.2f}–{high:.2f})"


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    cells = summarize(rows)
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
        "",
        "## Systems", "",
    ]
    for name, info in meta["systems"].items():
        env = " ".join(f"{k}={v}" for k, v in (info.get("env") or {}).items())
        lines.append(f"- **{name}**: `{(env + ' ') if env else ''}{info['command']}`"
                     + (f" ([config]({info['config']}))" if info.get("config") else "")
                     + f"; ready after {info.get('startup_s', [])} s; nice values (from /proc) "
                     f"`{json.dumps(info.get('nice', {}))}`")
    head = ["load", "system", "rounds", *(c.label for c in COLUMNS)]
    lines += ["", "## Median (min–max) over rounds", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (system, load), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append("| " + " | ".join([load, system, str(cell.rounds), *(
            _span(cell.median[c.key], cell.low[c.key], cell.high[c.key]) for c in COLUMNS)]) + " |")
    lines += ["", f"## Ratio to `{BASELINE}` in the same round: median (min–max)", "",
              "Latencies below 1× and req/s above 1× beat plain vLLM.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (system, load), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if system == BASELINE:
            continue
        lines.append("| " + " | ".join([load, system, str(cell.rounds), *(
            _span(cell.ratio[c.key], cell.ratio_low[c.key], cell.ratio_high[c.key], "×")
            for c in COLUMNS)]) + " |")
    lines += cpu_section(rows)
    failed = [r for r in rows if not r.get("summary")]
    if failed:
        lines += ["", "## Failed steps", ""]
        lines += [f"- round {r['round']} {r['system']}/{r['load']}: {r.get('error')}"
                  for r in failed]
    return "\n".join(lines) + "\n"


def cpu_per_request(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (system, load): median over rounds of each process role's CPU ms per request."""
    per: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        if not r.get("cpu_s") or not r.get("completed"):
            continue
        roles = per.setdefault((r["system"], r["load"]), {})
        for name, seconds in r["cpu_s"].items():
            roles.setdefault(name, []).append(1000 * seconds / r["completed"])
    return {key: {name: statistics.median(v) for name, v in roles.items()}
            for key, roles in per.items()}


def cpu_section(rows: list[dict[str, Any]]) -> list[str]:
    """Where each system's CPU goes per request: the profile behind the ratios."""
    cells = cpu_per_request(rows)
    if not cells:
        return []
    lines = ["", "## CPU ms per completed request, by process (median over rounds)", "",
             "Read from `/proc` before and after each load step: the system's process tree "
             "and the harness (vLLM's load generator runs in it).", "",
             "| load | system | total (without harness) | by process |", "|---|---|---|---|"]
    for (system, load), roles in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        served = sum(v for name, v in roles.items() if name != process_cpu.HARNESS_ROLE)
        parts = ", ".join(f"{name} {v:.1f}" for name, v in
                          sorted(roles.items(), key=lambda kv: -kv[1]) if v >= 0.05)
        lines.append(f"| {load} | {system} | {served:.1f} | {parts} |")
    return lines


def write(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    payload = {**meta, "results": rows, "summary": {
        f"{s}/{load}": asdict(cell) for (s, load), cell in summarize(rows).items()}}
    (out / "report.json").write_text(json.dumps(report.jsonable(payload), indent=2,
                                                default=str) + "\n")
    (out / "report.md").write_text(markdown(meta, rows))


def run_round(n: int, built: list[System], out: Path, meta: dict[str, Any],
              rows: list[dict[str, Any]], preload: list[str], ready_timeout_s: float) -> None:
    for system in built:
        info = meta["systems"][system.name]
        try:
            if system.ray_cluster:
                systems.wait_for_no_ray(600)
            log = out / "logs" / f"{system.name}.round{n}.server.log"
            with systems.running(system, log, preload, ready_timeout_s) as started:
                info.setdefault("startup_s", []).append(round(started.startup_s, 1))
                info["nice"] = systems.priorities(started.pid)
                for load_name, load in LOADS.items():
                    argv = workloads.bench_argv("random", load, system.base_url,
                                                system.model_name, system.model_dir)
                    step = f"{system.name}__{load_name}__r{n}"
                    before = process_cpu.snapshot(started.pid)
                    result = workloads.run_bench(argv, out / "logs" / f"{step}.bench.log")
                    cpu = process_cpu.by_role(before, process_cpu.snapshot(started.pid))
                    (out / "raw").mkdir(parents=True, exist_ok=True)
                    (out / "raw" / f"{step}.json").write_text(json.dumps(result, default=str))
                    rows.append({"round": n, "system": system.name, "load": load_name,
                                 "summary": report.summarize(result), "cpu_s": cpu,
                                 "completed": result.get("completed")})
                    print(f"round {n} {system.name}/{load_name}: " + ", ".join(
                        f"{c.label} {rows[-1]['summary'].get(c.key)}" for c in COLUMNS),
                        flush=True)
        except Exception as e:  # one failed system must not lose the others
            traceback.print_exc()
            done = {r["load"] for r in rows if r["round"] == n and r["system"] == system.name}
            rows += [{"round": n, "system": system.name, "load": name, "summary": None,
                      "error": repr(e)[:300]} for name in LOADS if name not in done]
        write(out, meta, rows)


def continue_report(out: Path, meta: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The rows of the report in `out` and the next round's number; `meta` keeps the earlier
    invocations (command, commit, date) and each system's start-up times."""
    previous = json.loads((out / "report.json").read_text())
    rows = previous["results"]
    earlier = previous.get("earlier", [])
    own_rounds = previous["rounds"] - sum(e["rounds"] for e in earlier)
    meta["earlier"] = [*earlier, {**{k: previous.get(k) for k in ("command", "git_revision",
                                                                  "date")},
                                  "rounds": own_rounds}]
    for name, info in meta["systems"].items():
        info["startup_s"] = list(previous["systems"].get(name, {}).get("startup_s", []))
    return rows, max((r["round"] for r in rows), default=0) + 1


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pdserve.benchmarks.overhead_bench",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEM_NAMES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--more", action="store_true",
                   help="add --rounds rounds to the report already in --out")
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
    built = [build_system(n, args.model, model_dir, out) for n in names]
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
        rows, first = continue_report(out, meta)
    meta["rounds"] = first - 1 + args.rounds
    for n in range(first, first + args.rounds):
        run_round(n, built, out, meta, rows, preload, args.ready_timeout)
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
