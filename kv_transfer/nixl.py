"""NIXL KV transfer: connector config per role, and each engine's host-unique settings.

vLLM reads the NIXL side channel from `VLLM_NIXL_SIDE_CHANNEL_HOST/PORT` and the CPU thread
binding from `VLLM_CPU_OMP_THREADS_BIND`; the engine-core subprocess inherits them. This module
is the one place that writes them (`apply_engine_env`), before the engine starts.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Literal

Role = Literal["prefill", "decode", "colocated", "embed"]

#: Ports reserved per pool: replica `local_rank` r of pool p gets base + p * stride + r.
PORTS_PER_POOL = 64

#: vLLM's NIXL connector with a sleeping progress thread (`kv_transfer/quiet_nixl.py`); named
#: by module path so that only the engine processes import it.
QUIET_CONNECTOR_MODULE = "pdserve.kv_transfer.quiet_nixl"
#: `kv_connector_extra_config` key the quiet connector reads its delay from.
PROGRESS_DELAY_KEY = "pdserve_progress_thread_delay_us"
#: The progress thread's sleep between polls unless the config says otherwise, in µs
#: (`kv_transfer.progress_thread_delay_us`; measured in `benchmarks/kv_transfer_bench.py`).
DEFAULT_PROGRESS_DELAY_US = 1000
#: vLLM `worker_extension_cls` that lets the engine host ask the worker about its NIXL agent.
NIXL_STATE_EXTENSION = f"{QUIET_CONNECTOR_MODULE}.NixlStateExtension"


@dataclass(frozen=True)
class EngineSlot:
    """Where one engine replica sits: its pool's index in the app and its rank on the host."""

    pool_index: int
    local_rank: int


def uses_nixl(role: Role) -> bool:
    """Whether engines of this role move KV over NIXL (prefill and decode pools)."""
    return role in ("prefill", "decode")


def kv_transfer_config(
    role: Role, engine_id: str, kv_buffer_device: str, progress_delay_us: int
) -> dict | None:
    """vLLM `kv_transfer_config` for an engine of this role (None: no connector).

    The connector is vLLM's `NixlConnector` loaded from the quiet module, whose NIXL progress
    thread sleeps `progress_delay_us` between polls (0: NIXL's own busy poll). Decode engines
    recompute locally when a KV load fails instead of failing the request.
    """
    if not uses_nixl(role):
        return None
    return {
        "kv_connector": "NixlConnector",
        "kv_connector_module_path": QUIET_CONNECTOR_MODULE,
        "kv_connector_extra_config": {PROGRESS_DELAY_KEY: progress_delay_us},
        "kv_role": "kv_producer" if role == "prefill" else "kv_consumer",
        "kv_buffer_device": kv_buffer_device,
        "engine_id": engine_id,
        "kv_load_failure_policy": "recompute",
    }


def side_channel_port(base: int, slot: EngineSlot) -> int:
    """Deterministic, host-unique NIXL side-channel port for an engine slot."""
    if not 0 <= slot.local_rank < PORTS_PER_POOL:
        raise ValueError(f"local_rank {slot.local_rank} outside 0..{PORTS_PER_POOL - 1}")
    return base + slot.pool_index * PORTS_PER_POOL + slot.local_rank


def first_free_port(preferred: int, limit: int, host: str = "127.0.0.1") -> int:
    """`preferred` if it can be bound, else the next free port below `limit`.

    Guards against a rank being reused while an old engine still holds its port.
    """
    for port in range(preferred, limit):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{preferred}, {limit})")


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
    pool_end = base_port + (slot.pool_index + 1) * PORTS_PER_POOL
    env = {
        "VLLM_NIXL_SIDE_CHANNEL_HOST": host,
        "VLLM_NIXL_SIDE_CHANNEL_PORT": str(first_free_port(preferred, pool_end, host)),
    }
    if bind_cpus:
        env["VLLM_CPU_OMP_THREADS_BIND"] = omp_threads_bind(
            slot, num_pools, sorted(os.sched_getaffinity(0))
        )
    os.environ.update(env)
    return env
