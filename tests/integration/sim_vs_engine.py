"""Run one request schedule through the real vLLM engine (in this process, stepped by hand)
and through the simulated engine (vLLM's scheduler without a model); write both engines'
batches, step by step, as JSON.

Usage: python sim_vs_engine.py OUT.json — a subprocess, because the real engine computes in
this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), which must not leak into the test run.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from pdserve.models import resolve_model

#: Small KV (12 blocks of 32 tokens) and 64-token steps: prompts are chunked, and requests
#: are preempted when decodes outgrow the cache. A small memory share: vLLM's CPU worker
#: refuses to start when less than that share of the host's memory is free (other engines).
ENGINE = {"dtype": "float32", "max_model_len": 320, "max_num_batched_tokens": 64,
          "block_size": 32, "num_gpu_blocks_override": 12, "gpu_memory_utilization": 0.05,
          "enforce_eager": True, "seed": 0, "max_num_seqs": 8}


def schedule(count: int = 60, seed: int = 1) -> list[tuple[int, str, list[int], int]]:
    """(step at which it arrives, id, prompt, max tokens); every fifth prompt shares the
    previous one's first 64 tokens (a prefix-cache hit)."""
    rng = random.Random(seed)
    out: list[tuple[int, str, list[int], int]] = []
    for i in range(count):
        prompt = [rng.randrange(5, 250) for _ in range(rng.randrange(10, 200))]
        if i % 5 == 0 and out:
            prompt = out[-1][2][:64] + prompt[:50]
        out.append((i * 3 + rng.randrange(3), str(i), prompt, rng.randrange(5, 60)))
    return out


def drive(engine, requests) -> None:
    pending, step = list(requests), 0
    while pending or engine.has_work():
        while pending and pending[0][0] <= step:
            _, request_id, prompt, max_tokens = pending.pop(0)
            engine.add(request_id, prompt, max_tokens)
        if engine.has_work():
            engine.step()
        step += 1


def main(out: str) -> None:
    from vllm.engine.arg_utils import EngineArgs

    from pdserve.simulation.engine import SimEngine
    from pdserve.simulation.real_engine import RealEngine

    kwargs = {"model": str(resolve_model("pdserve://tiny")), **ENGINE}
    requests = schedule()
    real = RealEngine(kwargs)
    drive(real, requests)
    sim = SimEngine(EngineArgs(**kwargs).create_engine_config(), real.num_blocks)
    batches = []
    original = sim.step

    def recording_step():
        batch = original()
        if batch.work:
            batches.append(batch)
        return batch

    sim.step = recording_step
    drive(sim, requests)
    Path(out).write_text(json.dumps({
        "real": [{"work": r.work, "preempted": sorted(r.preempted)} for r in real.records],
        "simulated": [{"work": b.work, "preempted": sorted(b.preempted)} for b in batches],
    }))


if __name__ == "__main__":
    main(sys.argv[1])
