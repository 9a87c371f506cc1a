"""Where an engine runs on its host: its NIXL side channel and the cores of its threads.

vLLM reads the NIXL side channel from `VLLM_NIXL_SIDE_CHANNEL_HOST/PORT` and the CPU thread
binding from `VLLM_CPU_OMP_THREADS_BIND`, pdserve's vLLM plugin the engine processes' wait
(`sleeping_wait.SPIN_ENV`); the engine-core subprocess inherits them. This module is the one
place that writes them (`apply_engine_env`), before the engine starts.
"""

from __future__ import annotations

import os

from pdserve.deployments.engine.sleeping_wait import DEFAULT_SPIN_S, SPIN_ENV
from pdserve.kv_transfer.ports import (
    EngineSlot,
    first_free_port,
    pool_port_limit,
    side_channel_port,
)


def omp_threads_bind(slot: EngineSlot, num_pools: int, cpus: list[int]) -> str:
    """Cores for this engine's OpenMP threads: spread engines round-robin over the host's cores.

    Engines of different pools and ranks get different cores while there are cores left;
    beyond that they share, which is still better than every engine binding all cores.
    """
    if not cpus:
        raise ValueError("no CPUs available to bind")
    engine_number = slot.local_rank * num_pools + slot.pool_index
    return str(sorted(cpus)[engine_number % len(cpus)])


def apply_engine_env(
    *, slot: EngineSlot, num_pools: int, base_port: int, host: str, bind_cpus: bool
) -> dict[str, str]:
    """Set this replica's engine environment; return what was set (for logs and tests)."""
    preferred = side_channel_port(base_port, slot)
    env = {
        SPIN_ENV: os.environ.get(SPIN_ENV, DEFAULT_SPIN_S),
        "VLLM_NIXL_SIDE_CHANNEL_HOST": host,
        "VLLM_NIXL_SIDE_CHANNEL_PORT": str(
            first_free_port(preferred, pool_port_limit(base_port, slot), host)),
    }
    if bind_cpus:
        env["VLLM_CPU_OMP_THREADS_BIND"] = omp_threads_bind(
            slot, num_pools, sorted(os.sched_getaffinity(0))
        )
    os.environ.update(env)
    return env
