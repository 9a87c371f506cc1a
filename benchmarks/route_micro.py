"""Microbenchmark of one routing decision: the router's own `choose()` over 64 replicas with
100 000 indexed blocks (request already hashed), and, separately, hashing cost per 1k tokens.

    python -m pdserve.benchmarks.route_micro --out benchmarks/results/routing-cpu-v1
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pdserve.routing.block_hashes import BlockHasher
from pdserve.routing.pool_state import PoolState
from pdserve.routing.router import PrefixAwareRouter
from pdserve.routing.scorers import RouterSettings
from pdserve.routing.types import RoutingInfo


def build_router(replicas: int, blocks: int, prompt_blocks: int,
                 rng: random.Random) -> tuple[Any, list[Any], RoutingInfo]:
    """A `PrefixAwareRouter` (no Ray: the decision code only) over a filled index."""
    pool = PoolState("bench/pool")
    pool.block_size = 32
    ids = [f"replica-{i:02d}" for i in range(replicas)]
    request = tuple(rng.getrandbits(64) for _ in range(prompt_blocks))
    with pool.lock:
        per_replica = blocks // replicas
        for i, rid in enumerate(ids):
            # Every 4th replica holds a prefix of the request of growing length.
            shared = list(request[: (i % prompt_blocks) + 1]) if i % 4 == 0 else []
            noise = [rng.getrandbits(64) for _ in range(per_replica - len(shared))]
            pool.index.store(rid, shared + noise)
    pool._capacity = {rid: 4 * per_replica for rid in ids}  # as engines report it
    for i, rid in enumerate(ids):
        for k in range(i % 3):
            pool.begin(rid, f"{rid}-{k}", 200 * k, ())
    router = PrefixAwareRouter.__new__(PrefixAwareRouter)
    router.settings = RouterSettings()
    router.pool = pool
    router.rng = random.Random(0)
    candidates = [SimpleNamespace(replica_id=SimpleNamespace(unique_id=rid)) for rid in ids]
    return router, candidates, RoutingInfo(block_hashes=request, prompt_tokens=32 * prompt_blocks)


def time_decisions(router: Any, candidates: list[Any], info: RoutingInfo,
                   n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        router.choose(candidates, info)
        samples.append(time.perf_counter() - start)
    return samples


def time_hashing(block_size: int, tokens: int, n: int) -> float:
    hasher = BlockHasher(block_size)
    rng = random.Random(1)
    prompts = [[rng.randrange(512) for _ in range(tokens)] for _ in range(n)]
    start = time.perf_counter()
    for p in prompts:
        hasher(p)
    return (time.perf_counter() - start) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--replicas", type=int, default=64)
    p.add_argument("--blocks", type=int, default=100_000)
    p.add_argument("--prompt-blocks", type=int, default=32)
    p.add_argument("--decisions", type=int, default=20_000)
    args = p.parse_args(argv)
    rng = random.Random(0)
    router, candidates, info = build_router(args.replicas, args.blocks, args.prompt_blocks, rng)
    assert len(router.pool.index) >= args.blocks * 0.99
    time_decisions(router, candidates, info, 500)  # warm-up
    us = sorted(s * 1e6 for s in time_decisions(router, candidates, info, args.decisions))
    result = {
        "replicas": args.replicas, "indexed_blocks": len(router.pool.index),
        "prompt_blocks": args.prompt_blocks, "decisions": args.decisions,
        "decision_us_p50": statistics.median(us), "decision_us_p99": us[int(0.99 * len(us))],
        "decision_us_max": us[-1],
        "hash_us_per_1k_tokens_block32": time_hashing(32, 1024, 200) * 1e6,
        "hash_us_per_1k_tokens_block16": time_hashing(16, 1024, 200) * 1e6,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "route_micro.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
