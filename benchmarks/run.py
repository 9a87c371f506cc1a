"""CLI: benchmark several serving systems side by side, one after another, in one run.

    python -m pdserve.benchmarks.run --systems pd,colocated,vllm \
        --workloads random,prefix_repetition --num-prompts 64 --out benchmarks/results/NAME

Each system is started once, driven through every workload with vLLM's serving benchmark,
and stopped before the next one starts. Raw results are saved after every step and the
report after every system, so an interrupted run still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pdserve.benchmarks import cpuwatch, report, systems, workloads
from pdserve.benchmarks.systems import System
from pdserve.benchmarks.workloads import LoadSettings

SYSTEM_NAMES = ("pd", "colocated", "vllm")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_load_flags(p: argparse.ArgumentParser) -> None:
    """Load shape: identical for every system of the run."""
    d = LoadSettings()
    p.add_argument("--num-prompts", type=int, default=d.num_prompts)
    p.add_argument("--input-len", type=int, default=d.input_len)
    p.add_argument("--output-len", type=int, default=d.output_len)
    p.add_argument(
        "--request-rate",
        type=float,
        default=d.request_rate,
        help="req/s (Poisson); inf sends all at once, bounded by --max-concurrency",
    )
    p.add_argument("--max-concurrency", type=int, default=d.max_concurrency, help="0 = unbounded")
    p.add_argument("--slo-ttft-ms", type=float, default=d.slo_ttft_ms)
    p.add_argument("--slo-tpot-ms", type=float, default=d.slo_tpot_ms)
    p.add_argument(
        "--prefix-len",
        type=int,
        default=d.prefix_len,
        help="shared-prefix tokens in prefix_repetition (of --input-len)",
    )
    p.add_argument("--num-prefixes", type=int, default=d.num_prefixes)
    p.add_argument("--num-warmups", type=int, default=d.num_warmups)
    p.add_argument("--seed", type=int, default=d.seed)


def add_system_flags(p: argparse.ArgumentParser) -> None:
    """Where the systems' configs, model and ports come from, and how long to wait."""
    p.add_argument("--pd-config", type=Path, default=Path("serve_configs/default.yaml"))
    p.add_argument("--colocated-config", type=Path, default=Path("serve_configs/colocated.yaml"))
    p.add_argument(
        "--baseline-config",
        type=Path,
        default=None,
        help="YAML whose engine_kwargs the vllm baseline uses (default: --pd-config)",
    )
    p.add_argument("--model-dir", help="override the model directory (weights + tokenizer)")
    p.add_argument("--model-name", help="served model name for vllm when no YAML is available")
    p.add_argument(
        "--engine-kwargs",
        type=json.loads,
        default={},
        help="JSON dict merged over the YAML's engine_kwargs for vllm",
    )
    p.add_argument("--vllm-port", type=int, default=systems.VLLM_PORT)
    p.add_argument(
        "--ready-timeout", type=float, default=600.0, help="seconds to wait for GET /v1/models"
    )
    p.add_argument(
        "--wait-for-ray",
        type=float,
        default=1800.0,
        help="seconds to wait for someone else's Ray cluster to finish",
    )
    p.add_argument("--no-preload", action="store_true", help="no LD_PRELOAD of tcmalloc/libiomp5")


def build_parser() -> argparse.ArgumentParser:
    """All flags of the CLI."""
    p = argparse.ArgumentParser(
        prog="python -m pdserve.benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--systems", type=_csv, default=list(SYSTEM_NAMES),
                   help="comma list of: " + ", ".join(SYSTEM_NAMES))  # fmt: skip
    p.add_argument("--workloads", type=_csv, default=list(workloads.WORKLOADS),
                   help="comma list of: " + ", ".join(workloads.WORKLOADS))  # fmt: skip
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/results/<date>)")
    add_load_flags(p)
    add_system_flags(p)
    return p


def load_settings(args: argparse.Namespace) -> LoadSettings:
    """The load shape of this run, identical for every system."""
    return LoadSettings(
        num_prompts=args.num_prompts, input_len=args.input_len, output_len=args.output_len,
        request_rate=args.request_rate, max_concurrency=args.max_concurrency or None,
        slo_ttft_ms=args.slo_ttft_ms, slo_tpot_ms=args.slo_tpot_ms, prefix_len=args.prefix_len,
        num_prefixes=args.num_prefixes, num_warmups=args.num_warmups, seed=args.seed,
    )  # fmt: skip


def baseline_system(args: argparse.Namespace) -> System:
    """Plain vLLM with the PD config's model and engine arguments (or the CLI overrides)."""
    config = args.baseline_config or args.pd_config
    if config.exists():
        spec = systems.load_model_spec(config)
    elif args.model_dir and args.model_name:
        spec = systems.ModelSpec(model_id=args.model_name, model=args.model_dir)
    else:
        raise SystemExit(f"{config} missing: pass --model-dir and --model-name for vllm")
    engine_kwargs = {**spec.engine_kwargs, **args.engine_kwargs}
    model_dir = args.model_dir or systems.resolve_model_dir(spec.model)
    return systems.vllm_system(model_dir, args.model_name or spec.model_id, engine_kwargs,
                               port=args.vllm_port)  # fmt: skip


def build_systems(args: argparse.Namespace) -> list[System]:
    """Systems in the order given on the command line."""
    out = []
    for name in args.systems:
        if name == "vllm":
            out.append(baseline_system(args))
        elif name in ("pd", "colocated"):
            config = args.pd_config if name == "pd" else args.colocated_config
            out.append(systems.pdserve_system(name, config, args.model_dir))
        else:
            raise SystemExit(f"unknown system {name!r}; known: {', '.join(SYSTEM_NAMES)}")
    return out


def run_step(system: System, workload: str, load: LoadSettings, out: Path) -> dict[str, Any]:
    """Drive one started system through one workload; keep raw results next to the report."""
    step = f"{system.name}__{workload}"
    argv = workloads.bench_argv(workload, load, system.base_url, system.model_name,
                                system.model_dir)  # fmt: skip
    row: dict[str, Any] = {"system": system.name, "workload": workload, "bench_args": argv,
                           "loadavg_1m_before": round(os.getloadavg()[0], 2)}  # fmt: skip
    watch = cpuwatch.StepWatch()
    watch.begin()
    try:
        result = workloads.run_bench(argv, out / "logs" / f"{step}.bench.log")
    except Exception as e:  # one failed step must not lose the others
        traceback.print_exc()
        return {**row, "status": "error", "error": repr(e), "summary": None}
    row |= watch.end()
    (out / "raw").mkdir(parents=True, exist_ok=True)
    (out / "raw" / f"{step}.json").write_text(json.dumps(result, default=str))
    return {**row, "status": "ok", "error": None, "summary": report.summarize(result)}


def run_system(system: System, names: list[str], load: LoadSettings, args: argparse.Namespace,
               ctx: dict[str, Any]) -> None:  # fmt: skip
    """Start `system`, run all workloads on it, stop it; record rows in `ctx`.

    The report is rewritten once the system has stopped, not while it runs: rendering
    competes for CPU with a running system (and raw results are already saved per step).
    """
    out, bar, meta, rows = ctx["out"], ctx["bar"], ctx["meta"], ctx["rows"]
    info = meta["systems"][system.name]
    try:
        if system.ray_cluster:
            systems.wait_for_no_ray(args.wait_for_ray)
        with systems.running(system, out / "logs" / f"{system.name}.server.log",
                             meta["preload"], args.ready_timeout) as started:  # fmt: skip
            info["startup_s"] = round(started.startup_s, 1)
            info["nice"] = systems.priorities(started.pid)
            for workload in names:
                bar.set_postfix_str(f"{system.name}/{workload}")
                rows.append(run_step(system, workload, load, out))
                bar.update(1)
            bar.set_postfix_str(f"stopping {system.name}")
    except Exception as e:
        traceback.print_exc()
        info["error"] = repr(e)
        done = {r["workload"] for r in rows if r["system"] == system.name}
        for workload in (w for w in names if w not in done):
            rows.append({"system": system.name, "workload": workload, "status": "error",
                         "error": f"system failed: {e!r}", "summary": None})  # fmt: skip
            bar.update(1)
    finally:
        report.write_report(out, meta, rows)


def system_info(s: System) -> dict[str, Any]:
    """What the report says about a system: how it was started and with which engine args."""
    return {
        "command": shlex.join(s.command),
        "base_url": s.base_url,
        "model": s.model_name,
        "model_dir": s.model_dir,
        "config": s.config_path,
        "engine_kwargs": s.engine_kwargs,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    unknown = [w for w in args.workloads if w not in workloads.WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; known: {list(workloads.WORKLOADS)}")
    load = load_settings(args)
    workloads.check(args.workloads, load)  # imports vLLM's benchmark now, before any server
    out: Path = args.out or Path("benchmarks/results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    to_run = build_systems(args)
    meta = report.run_metadata("python -m pdserve.benchmarks.run " + shlex.join(argv),
                               systems.REPO_ROOT)  # fmt: skip
    meta |= {"run_name": out.name, "load": asdict(load), "workloads": args.workloads,
             "preload": [] if args.no_preload else systems.find_preload_libs(),
             "systems": {s.name: system_info(s) for s in to_run}}  # fmt: skip
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(to_run) * len(args.workloads), desc="benchmark", unit="step") as bar:
        ctx = {"out": out, "bar": bar, "meta": meta, "rows": rows}
        for system in to_run:
            bar.set_postfix_str(f"starting {system.name}")
            run_system(system, args.workloads, load, args, ctx)
    report.write_report(out, meta, rows)
    print((out / "report.md").read_text())
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
