"""Where an engine runs on its host: its NIXL side channel and the cores of its threads.

vLLM reads the NIXL side channel from `VLLM_NIXL_SIDE_CHANNEL_HOST/PORT` and the CPU thread
binding from `VLLM_CPU_OMP_THREADS_BIND`, pdserve's vLLM plugin the engine processes' wait
(`sleeping_wait.SPIN_ENV`); the engine-core subprocess inherits them. This module is the one
place that writes them (`apply_engine_env`), before the engine starts.

An engine that needs no worker process (one worker, no data parallelism, no executor backend
named: `args.worker_processes`) runs its model in the engine-core process itself
(`single_process_env`; `PDSERVE_SINGLE_PROCESS_ENGINES=0` opts out): vLLM's CPU platform otherwise
always starts a separate
worker process (`platforms/cpu.py`, so that the worker's OpenMP environment can be set before
it starts), which on this machine doubled an engine's start (35 s → 17 s, 44 → 23 CPU-s for
the tiny model: one import of vLLM fewer) and hands every step across a shared-memory ring.
The engine-core process is spawned after this environment is set, so the OpenMP settings
vLLM would give the worker (`utils/ompmultiprocessing.py`: threads, places, binding) reach it
the same way.
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

#: "0" keeps vLLM's separate worker process even for engines that could compute in their engine
#: core (for comparisons, or should an OpenMP runtime misbehave in one process); read where the
#: engine host starts.
SINGLE_PROCESS_SWITCH = "PDSERVE_SINGLE_PROCESS_ENGINES"


def omp_threads_bind(slot: EngineSlot, num_pools: int, cpus: list[int], workers: int = 1) -> str:
    """Cores for this engine's OpenMP threads: spread engines round-robin over the host's cores,
    one core per worker, in vLLM's syntax (`|` between the workers of one engine).

    Engines of different pools and ranks get different cores while there are cores left;
    beyond that they share, which is still better than every engine binding all cores.
    """
    if not cpus:
        raise ValueError("no CPUs available to bind")
    cpus = sorted(cpus)
    first = (slot.local_rank * num_pools + slot.pool_index) * workers
    return "|".join(str(cpus[(first + rank) % len(cpus)]) for rank in range(workers))


def single_process_env(bind: str | None, ld_preload: str | None = None) -> dict[str, str]:
    """The environment that makes a one-worker engine compute in its engine-core process:
    vLLM's switch, and the OpenMP settings vLLM's multiprocessing executor gives a worker bound
    to the cores `bind` (`VLLM_CPU_OMP_THREADS_BIND` syntax: "0", "0-3", "0,2"), for the OpenMP
    runtime `ld_preload` (default: this process's `LD_PRELOAD`) brings: Intel's, GNU's, or
    torch's own."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if bind is None:
        return env
    cores = [str(core) for core in cpu_list(bind)]
    preload = os.environ.get("LD_PRELOAD", "") if ld_preload is None else ld_preload
    env["OMP_NUM_THREADS"] = str(len(cores))
    if "libiomp" in preload or "libomp" in preload:
        env |= {"KMP_AFFINITY": f"granularity=fine,explicit,proclist=[{','.join(cores)}]",
                "KMP_BLOCKTIME": "5", "KMP_TPAUSE": "0"}
    elif "libgomp" in preload:
        env["GOMP_CPU_AFFINITY"] = " ".join(cores)
    else:
        env |= {"OMP_PLACES": "{" + ",".join(cores) + "}", "OMP_PROC_BIND": "true"}
    return env


def cpu_list(bind: str) -> list[int]:
    """Cores named by a `VLLM_CPU_OMP_THREADS_BIND` value of one worker ("0-2,5"), sorted and
    without repeats, as vLLM reads it."""
    cores: set[int] = set()
    for part in bind.replace(" ", "").split(","):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return sorted(cores)


def apply_engine_env(
    *, slot: EngineSlot, num_pools: int, base_port: int, host: str, bind_cpus: bool,
    workers: int = 0,
) -> dict[str, str]:
    """Set this replica's engine environment; return what was set (for logs and tests).
    `workers`: the engine's worker processes (`args.worker_processes`); with none, the engine
    core computes itself (module docstring)."""
    preferred = side_channel_port(base_port, slot)
    env = {
        SPIN_ENV: os.environ.get(SPIN_ENV, DEFAULT_SPIN_S),
        "VLLM_NIXL_SIDE_CHANNEL_HOST": host,
        # the address vLLM binds its KV-event sockets on (`tcp://*:0` in `args.py`): this
        # node's cluster address, not all interfaces (KV events carry prompt token ids)
        "VLLM_HOST_IP": host,
        "VLLM_NIXL_SIDE_CHANNEL_PORT": str(
            first_free_port(preferred, pool_port_limit(base_port, slot), host)),
    }
    if os.environ.get(SINGLE_PROCESS_SWITCH, "1") == "0":
        workers = max(workers, 1)  # the operator keeps vLLM's worker process
    bind = (omp_threads_bind(slot, num_pools, sorted(os.sched_getaffinity(0)), max(workers, 1))
            if bind_cpus else None)
    if bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    if workers == 0:
        env |= single_process_env(bind)
    os.environ.update(env)
    return env


def physical_engine_slots(bind_cpus: bool, workers: int, on_cpu: bool) -> int | None:
    """Engines this host holds without two sharing a core: its cores over each engine's
    workers (one core each, `omp_threads_bind`). None where that is not the bound: engines
    not pinned to cores, or on accelerators (Ray places those by `num_gpus`)."""
    if not (bind_cpus and on_cpu):
        return None
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))
