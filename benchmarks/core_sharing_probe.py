"""How much slower an engine steps when other engines step beside it: on its own core
(time-sharing, 2× with two engines on a core, plus what they cost each other) and on the host's
other cores (caches, memory bandwidth), on the box at hand: what the simulator's
`core_contention` scales are measured with.

    python -m pdserve.benchmarks.core_sharing_probe --out benchmarks/results/X/core-sharing.json
    python -m pdserve.benchmarks.core_sharing_probe --cores 0,1 --repeats 3 --out ...

Runs one engine of `--config`'s model (the profiler's engine arguments and thread binding)
alone on the first of `--cores`, then `--engines` of them at once, each its own process, the
k-th pinned to the k-th of `--cores` (round robin: one core listed puts them all on it),
started together once all have loaded and stopped at the same deadline; each steps rounds of
`--batch` fresh 512-token prompts with 64 out for `--seconds`. `--repeats` measures
alone-then-shared pairs, so that each ratio compares two measurements minutes apart (this VM's
speed drifts by more than the effect within tens of minutes). Reports, per pair and as
medians (and per core when the engines are on several), decode and prefill step p50 alone and
shared and their ratios, in elapsed time and in the stepping thread's CPU time: sharing a core
stretches the first and not the second unless the engines also slow each other's work, which
both show. `--profile P` writes the CPU-time ratios of a two-engine run into P.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pdserve.benchmarks.systems import REPO_ROOT

#: The served `bench` engine the profile and the validation runs use: its engine arguments.
CONFIG = REPO_ROOT / "benchmarks/results/sim-validation-cpu-v1/configs/pd.yaml"
#: Longest a child may take to load, or to run past its deadline, before the probe gives up.
CHILD_TIMEOUT_S = 600.0


def engine_args(config: Path) -> dict[str, Any]:
    """The config's only model's engine arguments, as the profiler starts its engine."""
    from pdserve.simulation.profiler import engine_kwargs_of
    from pdserve.simulation.serve_config import load_app, pick_model

    return engine_kwargs_of(pick_model(load_app(config), None))


def computes_a_prompt(record: Any) -> bool:
    """A real step (`real_engine.StepRecord`) of the kind the simulator charges prefill's
    contention (`step_model.is_prefill_step`)."""
    from pdserve.simulation.step_model import is_prefill_step

    return is_prefill_step(record.work.values())


def run_engine(kwargs: dict[str, Any], core: str, batch: int, seconds: float, ready: Any,
               queue: Any, seed: int) -> None:
    """One engine on `core`: rounds of `batch` prompts of 512 fresh random tokens (never a
    cached prefix) with 64 out each, from when every engine has loaded (`ready`, a barrier)
    until `seconds` later; puts its decode and prefill steps' (elapsed, CPU) times."""
    import random

    from pdserve.simulation.profiler import bind_engine_threads, check_engine_threads

    bind_engine_threads(core)
    from pdserve.simulation.real_engine import RealEngine

    engine = RealEngine(kwargs)
    check_engine_threads(core)
    vocab = engine.vllm_config.model_config.get_vocab_size()
    rng = random.Random(seed)
    ready.wait(timeout=CHILD_TIMEOUT_S)
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        for _ in range(batch):
            engine.add(f"r{n}", [rng.randrange(10, vocab - 10) for _ in range(512)], 64)
            n += 1
        while engine.has_work() and time.perf_counter() < deadline:
            engine.step()
    decode = [(r.seconds, r.cpu_seconds) for r in engine.records if not computes_a_prompt(r)]
    prefill = [(r.seconds, r.cpu_seconds) for r in engine.records if computes_a_prompt(r)]
    engine.close()
    queue.put((core, decode, prefill))


def measure(kwargs: dict[str, Any], placement: list[str], batch: int,
            seconds: float) -> dict[str, Any]:
    """One engine per entry of `placement` (the core it is pinned to), all at once: their
    steps' p50s, per core too when on several (a child that fails to report ends the probe)."""
    ctx = multiprocessing.get_context("spawn")
    queue, ready = ctx.Queue(), ctx.Barrier(len(placement))
    procs = [ctx.Process(target=run_engine, args=(kwargs, core, batch, seconds, ready, queue, k))
             for k, core in enumerate(placement)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=seconds + 2 * CHILD_TIMEOUT_S) for _ in procs]
    except Exception as exc:  # a child died (load failure, out of memory) or hung
        codes = [p.exitcode for p in procs]
        for p in procs:
            p.kill()
        raise SystemExit(f"an engine of the probe did not report (exit codes {codes}): "
                         f"{type(exc).__name__}") from exc
    for p in procs:
        p.join()
    summary = p50s(results)
    if not summary["decode_steps"] or not summary["prefill_steps"]:
        raise SystemExit(f"too short to time both kinds of step ({summary['decode_steps']} "
                         f"decode, {summary['prefill_steps']} prefill steps): raise --seconds")
    by_core = {core: p50s([r for r in results if r[0] == core]) for core in sorted(set(placement))}
    return {"engines": len(placement), "cores": placement,
            **summary, **({"by_core": by_core} if len(by_core) > 1 else {})}


def p50s(results: list[tuple[str, list, list]]) -> dict[str, Any]:
    """Step p50s (elapsed and CPU, decode and prefill) over the engines' (core, decode steps,
    prefill steps)."""
    decode = [x for _, d, _ in results for x in d]
    prefill = [x for _, _, p in results for x in p]

    def p50_ms(steps: list[tuple[float, float]], i: int) -> float | None:
        return 1e3 * statistics.median(step[i] for step in steps) if steps else None

    return {"decode_step_p50_ms": p50_ms(decode, 0), "prefill_step_p50_ms": p50_ms(prefill, 0),
            "decode_cpu_p50_ms": p50_ms(decode, 1), "prefill_cpu_p50_ms": p50_ms(prefill, 1),
            "decode_steps": len(decode), "prefill_steps": len(prefill)}


#: The ratios a pair reports: (name, the p50 compared).
RATIOS = (("decode_ratio", "decode_step_p50_ms"), ("prefill_ratio", "prefill_step_p50_ms"),
          ("decode_cpu_ratio", "decode_cpu_p50_ms"), ("prefill_cpu_ratio", "prefill_cpu_p50_ms"))


def pair(alone: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """One alone-then-shared measurement and how much slower sharing stepped (on each core
    too, against the same lone engine, when the shared engines were on several)."""
    def ratios(p50: dict[str, Any]) -> dict[str, float | None]:
        return {name: p50[key] / alone[key] if p50[key] is not None else None
                for name, key in RATIOS}

    by_core = {core: ratios(p50) for core, p50 in shared.get("by_core", {}).items()}
    return {"alone": alone, "shared": shared, **ratios(shared),
            **({"by_core": by_core} if by_core else {})}


def medians(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each ratio's median over the pairs, with its range (per core too, if measured)."""
    def spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
        out = {}
        for name, _ in RATIOS:
            values = [r[name] for r in rows if r.get(name) is not None]
            out[name] = ({"median": statistics.median(values), "low": min(values),
                          "high": max(values)} if values else None)
        return out

    cores = sorted({c for p in pairs for c in p.get("by_core", {})})
    by_core = {c: spread([p["by_core"][c] for p in pairs if c in p.get("by_core", {})])
               for c in cores}
    return {**spread(pairs), **({"by_core": by_core} if by_core else {})}


def contention_kind(placement: list[str]) -> str | None:
    """The `profile_file.CoreContention` scales a two-engine run measures: both on one core
    time-share it; on two cores they step side by side; None otherwise (more engines, whose
    ratios are not what the scales mean: reported, not written)."""
    if len(placement) != 2:
        return None
    return "shared_core_scale" if placement[0] == placement[1] else "other_core_scale"


def check_profile(profile_path: Path, kwargs: dict[str, Any]) -> None:
    """Refuse, before minutes of measuring, a profile that is unreadable or of another engine
    or CPU than the probe runs: its scales must hold for its own step times."""
    from pdserve.benchmarks.report import machine_info
    from pdserve.simulation import profile_file

    try:
        profile = profile_file.load(profile_path)
    except (OSError, ValueError) as exc:  # missing, not JSON, another version, a bad field
        raise SystemExit(f"--profile: {exc}") from exc
    engine = {k: v for k, v in kwargs.items() if k != "model"}
    if profile.engine_kwargs != engine:
        raise SystemExit(f"{profile_path} profiles other engine arguments "
                         f"({profile.engine_kwargs}) than --config's ({engine})")
    here, there = machine_info().get("cpu_model"), profile.machine.get("cpu_model")
    if here != there:
        raise SystemExit(f"{profile_path} was measured on {there!r}, this is {here!r}")


def write_contention(profile_path: Path, result: dict[str, Any], command: str) -> Path:
    """Set the profile's contention scales this run measured (decode's and prefill's median
    CPU-time ratios; a ratio below 1 is drift, written as 1) and say where they came from
    (replacing what an earlier run said for the same scales)."""
    from pdserve.simulation import profile_file

    kind = contention_kind(result["cores"])
    if kind is None:
        raise SystemExit(f"cores {result['cores']}: a profile's scales are measured with two "
                         "engines, on one core or on two")
    profile = profile_file.load(profile_path)
    decode, prefill = result["decode_cpu_ratio"], result["prefill_cpu_ratio"]
    unmeasured = profile_file.CoreContention().source
    kept = [e for e in profile.core_contention.source.split("; ")
            if e != unmeasured and not e.startswith(f"{kind}: ")]
    contention = profile.core_contention.model_copy(update={
        kind: max(1.0, decode["median"]), f"prefill_{kind}": max(1.0, prefill["median"]),
        "source": "; ".join([*kept, f"{kind}: `{command}` ({len(result['pairs'])} pairs; CPU "
                             f"ratio medians: decode {decode['median']:.3f} "
                             f"({decode['low']:.3f}–{decode['high']:.3f}), prefill "
                             f"{prefill['median']:.3f} ({prefill['low']:.3f}–"
                             f"{prefill['high']:.3f}))"])})
    profile.model_copy(update={"core_contention": contention}).save(profile_path)
    return profile_path


def main(argv: list[str] | None = None) -> None:
    from pdserve.benchmarks.report import machine_info

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cores", default="1",
                   help="comma-separated cores the engines are pinned to, round robin")
    p.add_argument("--engines", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=1, help="alone-then-shared pairs")
    p.add_argument("--config", type=Path, default=CONFIG,
                   help="serve config whose only model's engine arguments to run")
    p.add_argument("--profile", type=Path, default=None,
                   help="a profile of the same engine and machine to write the measured "
                   "contention into (`core_contention`: one core listed measures "
                   "`shared_core_scale`, one core per engine `other_core_scale`)")
    args = p.parse_args(argv)
    cores = [c.strip() for c in args.cores.split(",") if c.strip()]
    if args.engines < 2 or args.batch < 1 or args.seconds <= 0 or args.repeats < 1 or not cores:
        p.error("--engines ≥ 2, --batch ≥ 1, --seconds > 0, --repeats ≥ 1 and a core")
    placement = [cores[k % len(cores)] for k in range(args.engines)]
    if args.profile and contention_kind(placement) is None:
        p.error("--profile: two engines (--engines 2), on one core or on two")
    kwargs = engine_args(args.config)
    if args.profile:
        check_profile(args.profile, kwargs)
    pairs = []
    for _ in range(args.repeats):
        alone = measure(kwargs, placement[:1], args.batch, args.seconds)
        pairs.append(pair(alone, measure(kwargs, placement, args.batch, args.seconds)))
    result = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
              "engine": kwargs, "cores": placement, "alone_core": placement[0],
              "pairs": pairs, **medians(pairs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if args.profile:
        command = "python -m pdserve.benchmarks.core_sharing_probe " + shlex.join(
            argv if argv is not None else sys.argv[1:])
        written = write_contention(args.profile, result, command)
        print(f"wrote {contention_kind(placement)} into {written}")


if __name__ == "__main__":
    main()
