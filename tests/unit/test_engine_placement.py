"""Per-engine host settings: NIXL ports unique on a host, CPU cores spread over engines."""

from __future__ import annotations

import socket

import pytest
from pdserve.kv_transfer.nixl import (
    PORTS_PER_POOL,
    EngineSlot,
    first_free_port,
    kv_transfer_config,
    omp_threads_bind,
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
    prefill = kv_transfer_config("prefill", "e1", "cpu")
    decode = kv_transfer_config("decode", "e2", "cpu")
    assert prefill is not None and decode is not None
    assert prefill["kv_role"] == "kv_producer"
    assert decode["kv_role"] == "kv_consumer"
    assert decode["kv_load_failure_policy"] == "recompute"
    assert kv_transfer_config("colocated", "e3", "cpu") is None
