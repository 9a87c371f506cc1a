"""How much slower an engine steps when another engine is pinned to its core: what the
simulator's CPU host assumes (time-sharing: 2× with two engines on a core) checked on the box
at hand.

    python -m pdserve.benchmarks.core_sharing_probe --out benchmarks/results/X/core-sharing.json

Runs one engine of `--config`'s model (the profiler's engine arguments and thread binding)
alone on `--core`, then `--engines` of them at once, each its own process pinned to the same
core, started together once all have loaded and stopped at the same deadline; each steps
rounds of `--batch` fresh 512-token prompts with 64 out for `--seconds`. Reports decode and
prefill step p50 alone, shared, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
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
    """A step (`real_engine.StepRecord`) with a prompt chunk in its batch: a prefill step."""
    return any(is_prompt for _, _, is_prompt, _ in record.work.values())


def run_engine(kwargs: dict[str, Any], core: str, batch: int, seconds: float, ready: Any,
               queue: Any, seed: int) -> None:
    """One engine on `core`: rounds of `batch` prompts of 512 fresh random tokens (never a
    cached prefix) with 64 out each, from when every engine has loaded (`ready`, a barrier)
    until `seconds` later; puts (decode step times, prefill step times)."""
    import random

    from pdserve.simulation.profiler import bind_engine_threads

    bind_engine_threads(core)
    from pdserve.simulation.real_engine import RealEngine

    engine = RealEngine(kwargs)
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
    decode = [r.seconds for r in engine.records if not computes_a_prompt(r)]
    prefill = [r.seconds for r in engine.records if computes_a_prompt(r)]
    engine.close()
    queue.put((decode, prefill))


def measure(kwargs: dict[str, Any], engines: int, core: str, batch: int,
            seconds: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue, ready = ctx.Queue(), ctx.Barrier(engines)
    procs = [ctx.Process(target=run_engine,
                         args=(kwargs, core, batch, seconds, ready, queue, k))
             for k in range(engines)]
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
    decode = [x for d, _ in results for x in d]
    prefill = [x for _, p in results for x in p]
    if not decode or not prefill:
        raise SystemExit(f"too short to time both kinds of step ({len(decode)} decode, "
                         f"{len(prefill)} prefill steps): raise --seconds")
    return {"engines": engines, "decode_step_p50_ms": 1e3 * statistics.median(decode),
            "prefill_step_p50_ms": 1e3 * statistics.median(prefill),
            "decode_steps": len(decode), "prefill_steps": len(prefill)}


def main(argv: list[str] | None = None) -> None:
    from pdserve.benchmarks.report import machine_info

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--core", default="1")
    p.add_argument("--engines", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--config", type=Path, default=CONFIG,
                   help="serve config whose only model's engine arguments to run")
    args = p.parse_args(argv)
    if args.engines < 2 or args.batch < 1 or args.seconds <= 0:
        p.error("--engines ≥ 2, --batch ≥ 1 and --seconds > 0")
    kwargs = engine_args(args.config)
    alone = measure(kwargs, 1, args.core, args.batch, args.seconds)
    shared = measure(kwargs, args.engines, args.core, args.batch, args.seconds)
    result = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
              "engine": kwargs,
              "alone": alone, "shared": shared,
              "decode_ratio": shared["decode_step_p50_ms"] / alone["decode_step_p50_ms"],
              "prefill_ratio": shared["prefill_step_p50_ms"] / alone["prefill_step_p50_ms"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
