"""Replica scoring for the routers: pure functions of an explicit snapshot (no Ray, no I/O).

Each scorer maps (request, replica, pool) to [0, 1]; the router clamps, weighs and sums them
(weights from YAML) and ranks replicas by the total. When the pool's load is imbalanced
beyond a threshold, scoring steps aside for power-of-two choices on queue length, so a hot
prefix cannot pile every request onto one replica.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass(frozen=True)
class RequestView:
    """What scoring knows about a request: its hashed size and whether prefixes matter."""

    num_blocks: int
    prompt_tokens: int
    block_size: int
    use_prefix: bool = True
    session_replica: Hashable | None = None  # where this session's last turn went


@dataclass(frozen=True)
class ReplicaView:
    """One candidate replica at decision time."""

    replica: Hashable
    hit_blocks: int = 0  # leading request blocks this replica holds (from the index)
    queue: int = 0  # requests in flight to it
    pending_tokens: int = 0  # uncached prompt tokens routed to it and not yet finished
    kv_usage: float = 0.0  # engine's KV-cache usage, 0..1, from its last report


class RouterSettings(BaseModel):
    """`request_router_kwargs` of our routers (validated; unknown keys are errors)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: dict[str, float] = Field(
        default_factory=lambda: {"prefix": 2.0, "queue": 1.0, "tokens": 1.0,
                                 "kv_headroom": 0.5, "session": 1.0},
        description="Weight per scorer (names: prefix, queue, tokens, kv_headroom, session).",
    )
    queue_scale: float = Field(8.0, gt=0, description="Queue length that scores 0 on `queue`.")
    token_scale: float = Field(
        4096.0, gt=0, description="Pending uncached prompt tokens that score 0 on `tokens`."
    )
    imbalance_threshold: int = Field(
        8, ge=1, description="Queue-length spread beyond which power-of-two choices decides."
    )
    max_sessions: int = Field(100_000, ge=1, description="Session-affinity entries kept (LRU).")
    max_blocks_per_replica: int = Field(
        1 << 20, ge=1, description="Index entries kept per replica (bound if events are lost)."
    )

    @field_validator("weights")
    @classmethod
    def _known_scorers(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(SCORERS))
        if unknown:
            raise ValueError(f"unknown scorer(s) {unknown}; known: {sorted(SCORERS)}")
        negative = sorted(k for k, v in weights.items() if v < 0)
        if negative:
            raise ValueError(f"weights must be >= 0: {negative}")
        return weights


Scorer = Callable[[RequestView, ReplicaView, RouterSettings], float]


def prefix_score(request: RequestView, replica: ReplicaView, _: RouterSettings) -> float:
    """Share of the request's blocks this replica can reuse."""
    if not request.use_prefix or request.num_blocks == 0:
        return 0.0
    return replica.hit_blocks / request.num_blocks


def queue_score(_: RequestView, replica: ReplicaView, settings: RouterSettings) -> float:
    return 1.0 - replica.queue / settings.queue_scale


def tokens_score(_: RequestView, replica: ReplicaView, settings: RouterSettings) -> float:
    return 1.0 - replica.pending_tokens / settings.token_scale


def kv_headroom_score(_: RequestView, replica: ReplicaView, __: RouterSettings) -> float:
    return 1.0 - replica.kv_usage


def session_score(request: RequestView, replica: ReplicaView, _: RouterSettings) -> float:
    return 1.0 if request.session_replica == replica.replica else 0.0


SCORERS: dict[str, Scorer] = {
    "prefix": prefix_score,
    "queue": queue_score,
    "tokens": tokens_score,
    "kv_headroom": kv_headroom_score,
    "session": session_score,
}


def total_score(request: RequestView, replica: ReplicaView, settings: RouterSettings) -> float:
    return sum(
        weight * min(1.0, max(0.0, SCORERS[name](request, replica, settings)))
        for name, weight in settings.weights.items()
        if weight
    )


def is_imbalanced(replicas: Sequence[ReplicaView], threshold: int) -> bool:
    queues = [r.queue for r in replicas]
    return bool(queues) and max(queues) - min(queues) > threshold


def power_of_two(replicas: Sequence[ReplicaView], rng: random.Random) -> list[ReplicaView]:
    """Two random candidates, shorter queue first (Ray's default policy, on our snapshot)."""
    if len(replicas) <= 2:
        return sorted(replicas, key=lambda r: r.queue)
    pair = rng.sample(list(replicas), 2)
    return sorted(pair, key=lambda r: r.queue)


def rank(
    request: RequestView,
    replicas: Sequence[ReplicaView],
    settings: RouterSettings,
    rng: random.Random,
) -> list[ReplicaView]:
    """Replicas best first. Ties go to the shorter queue, then fewer pending tokens, then
    chance (so equal replicas share load instead of the first one taking everything)."""
    if is_imbalanced(replicas, settings.imbalance_threshold):
        return power_of_two(replicas, rng)
    keyed = [
        (-round(total_score(request, r, settings), 9), r.queue, r.pending_tokens, rng.random(), r)
        for r in replicas
    ]
    keyed.sort(key=lambda k: k[:4])
    return [k[-1] for k in keyed]
