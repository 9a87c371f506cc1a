"""Per-engine host settings: NIXL ports unique on a host, CPU cores spread over engines."""

from __future__ import annotations

import socket

import pytest
from vllm.config.kv_transfer import KVTransferConfig

from pdserve.deployments.config.models import ModelConfig
from pdserve.deployments.engine.args import engine_args
from pdserve.deployments.engine.placement import omp_threads_bind
from pdserve.kv_transfer.connector import NIXL_STATE_EXTENSION, QUIET_CONNECTOR_MODULE
from pdserve.kv_transfer.ports import (
    PORTS_PER_POOL,
    EngineSlot,
    first_free_port,
    side_channel_port,
)


def test_side_channel_ports_are_unique_across_pools_and_ranks() -> None:
    slots = [EngineSlot(pool, rank) for pool in range(5) for rank in range(8)]
    ports = [side_channel_port(20000, slot) for slot in slots]
    assert len(set(ports)) == len(ports)
    assert min(ports) == 20000


def test_same_rank_in_two_pools_gets_different_ports() -> None:
    assert side_channel_port(20000, EngineSlot(0, 0)) != side_channel_port(20000, EngineSlot(1, 0))


def test_rank_beyond_pool_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="local_rank"):
        side_channel_port(20000, EngineSlot(0, PORTS_PER_POOL))


def test_first_free_port_skips_a_port_in_use() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert first_free_port(taken, taken + 10) != taken


@pytest.mark.parametrize(
    ("slot", "num_pools", "cpus", "expected"),
    [
        (EngineSlot(0, 0), 2, [0, 1], "0"),  # PD: prefill on core 0
        (EngineSlot(1, 0), 2, [0, 1], "1"),  # PD: decode on core 1
        (EngineSlot(0, 1), 1, [0, 1], "1"),  # colocated, second replica
        (EngineSlot(2, 0), 3, [0, 1], "0"),  # third engine shares a core
        (EngineSlot(1, 1), 2, [4, 5, 6, 7], "7"),
    ],
)
def test_engines_are_spread_over_cores(
    slot: EngineSlot, num_pools: int, cpus: list[int], expected: str
) -> None:
    assert omp_threads_bind(slot, num_pools, cpus) == expected


def test_connector_roles() -> None:
    model = ModelConfig(model_id="m", model="org/model", kv_transfer={
        "progress_thread_delay_us": 2000, "kv_lease_s": 12})
    prefill = engine_args(model, "prefill", "e1").kv_transfer_config
    decode = engine_args(model, "decode", "e2").kv_transfer_config
    assert prefill is not None and decode is not None
    assert prefill["kv_role"] == "kv_producer"
    assert decode["kv_role"] == "kv_consumer"
    assert decode["kv_load_failure_policy"] == "recompute"
    assert decode["kv_connector_module_path"] == QUIET_CONNECTOR_MODULE
    assert decode["kv_connector_extra_config"] == {"pdserve_progress_thread_delay_us": 2000,
                                                   "kv_lease_duration": 12}
    # vLLM reads the lease under this name (prefill side: scheduler; both: worker)
    kv_config = KVTransferConfig(**prefill)
    assert kv_config.get_from_extra_config("kv_lease_duration", 30) == 12
    assert engine_args(model, "decode", "e2").worker_extension_cls == NIXL_STATE_EXTENSION
    for role in ("colocated", "embed"):
        args = engine_args(model, role, "e3")
        assert args.kv_transfer_config is None and not args.worker_extension_cls
