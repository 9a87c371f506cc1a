"""What routing needs to cross a process: a request's routing info and a replica's stats.

`RoutingInfo` rides on every prefill/decode message (computed once, in the ingress) and is read
by the routers. `RoutingStats` is what an engine replica publishes through Ray Serve's
`record_routing_stats` and the ingress's pool state reads back; Ray carries it as a plain dict,
so `encode`/`decode` are the one agreement about its keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

PlanKind = Literal["remote", "local", "colocated"]


@dataclass(frozen=True)
class RoutingInfo:
    """What the routers read: the prompt's block hashes (computed once, at the ingress)."""

    block_hashes: tuple[int, ...] = ()
    prompt_tokens: int = 0
    session_id: str | None = None
    plan: PlanKind = "colocated"
    #: Replicas a resumed request must not go back to (their engine died) while others exist.
    avoid: tuple[str, ...] = ()
    #: The LoRA adapter it runs with (routers prefer replicas that hold it loaded).
    adapter: str | None = None


@dataclass(frozen=True)
class RoutingStats:
    """One engine replica's report to the routers: where it publishes KV events, its KV
    geometry, and its scheduler's latest load."""

    replica: str
    block_size: int
    num_gpu_blocks: int = 0
    kv_events_endpoint: str | None = None
    kv_events_replay_endpoint: str | None = None
    kv_cache_usage: float = 0.0
    num_running: int = 0
    num_waiting: int = 0
    #: Drained by an operator: it turns requests away, so routers leave it out.
    draining: bool = False
    #: LoRA adapters its engine holds loaded (by name).
    adapters: tuple[str, ...] = ()

    def encode(self) -> dict[str, Any]:
        """The dict Ray Serve carries from the replica to the routers."""
        return asdict(self)

    @classmethod
    def decode(cls, stats: Mapping[str, Any] | None) -> RoutingStats | None:
        """The stats a replica reported; None before its first report (Ray gives `{}`)."""
        if not stats:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stats.items() if k in known})
