"""NIXL side-channel ports: one per engine, unique on its host across pools and models.

Ray's replica ranks are per deployment, so two pools both have a `local_rank` 0: the port is
derived from (pool index, local rank), and the next free one is taken if an old engine still
holds it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

#: Ports reserved per pool: replica `local_rank` r of pool p gets base + p * stride + r.
PORTS_PER_POOL = 64


@dataclass(frozen=True)
class EngineSlot:
    """Where one engine replica sits: its pool's index in the app and its rank on the host."""

    pool_index: int
    local_rank: int


def side_channel_port(base: int, slot: EngineSlot) -> int:
    """Deterministic, host-unique NIXL side-channel port for an engine slot."""
    if not 0 <= slot.local_rank < PORTS_PER_POOL:
        raise ValueError(f"local_rank {slot.local_rank} outside 0..{PORTS_PER_POOL - 1}")
    return base + slot.pool_index * PORTS_PER_POOL + slot.local_rank


def pool_port_limit(base: int, slot: EngineSlot) -> int:
    """First port past the slot's pool range."""
    return base + (slot.pool_index + 1) * PORTS_PER_POOL


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
