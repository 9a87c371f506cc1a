"""How much slower an engine steps when another engine is pinned to its core: what the
simulator's CPU host assumes (time-sharing: 2× with two engines on a core) checked on the box
at hand.

    python -m pdserve.benchmarks.core_sharing_probe --out benchmarks/results/X/core-sharing.json

Runs one `bench` engine (the profiler's engine arguments and thread binding) alone on `--core`,
then `--engines` of them at once, each its own process pinned to the same core; each steps a
fixed load (prefills of `--batch` × 512-token prompts, then their decodes) for `--seconds`.
Reports decode and prefill step p50 alone, shared, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

ENGINE = {"dtype": "float32", "max_model_len": 2048, "max_num_batched_tokens": 2048,
          "block_size": 32, "kv_cache_memory_bytes": 512 * 2**20, "enforce_eager": True,
          "seed": 0}


def computes_a_prompt(record: Any) -> bool:
    """A step (`real_engine.StepRecord`) with a prompt chunk in its batch: a prefill step."""
    return any(is_prompt for _, _, is_prompt, _ in record.work.values())


def run_engine(core: str, batch: int, seconds: float, start_at: float,
               queue: Any) -> None:
    """One engine on `core`: rounds of `batch` prompts of 512 tokens with 64 out each until
    `seconds` passed after `start_at`; puts (decode step times, prefill step times)."""
    from pdserve.benchmarks.systems import resolve_model_dir
    from pdserve.simulation.profiler import bind_engine_threads

    bind_engine_threads(core)
    from pdserve.simulation.real_engine import RealEngine

    engine = RealEngine({**ENGINE, "model": resolve_model_dir("pdserve://bench")})
    while time.time() < start_at:  # every engine loaded before any steps
        time.sleep(0.05)
    n = 0
    while time.time() < start_at + seconds:
        for _ in range(batch):
            engine.add(f"r{n}", [(7 * n + i) % 500 + 1 for i in range(512)], 64)
            n += 1
        while engine.has_work():
            engine.step()
    decode = [r.seconds for r in engine.records if not computes_a_prompt(r)]
    prefill = [r.seconds for r in engine.records if computes_a_prompt(r)]
    engine.close()
    queue.put((decode, prefill))


def measure(engines: int, core: str, batch: int, seconds: float, load_s: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + load_s
    procs = [ctx.Process(target=run_engine, args=(core, batch, seconds, start_at, queue))
             for _ in range(engines)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    decode = [x for d, _ in results for x in d]
    prefill = [x for _, p in results for x in p]
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
    p.add_argument("--load-s", type=float, default=40.0,
                   help="time allowed for every engine to load before the clock starts")
    args = p.parse_args(argv)
    alone = measure(1, args.core, args.batch, args.seconds, args.load_s)
    shared = measure(args.engines, args.core, args.batch, args.seconds, args.load_s)
    result = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
              "alone": alone, "shared": shared,
              "decode_ratio": shared["decode_step_p50_ms"] / alone["decode_step_p50_ms"],
              "prefill_ratio": shared["prefill_step_p50_ms"] / alone["prefill_step_p50_ms"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
