"""Replica scoring for the routers: pure functions of an explicit snapshot (no Ray, no I/O).

Each scorer maps (request, replica, pool) to [0, 1]; the router clamps, weighs and sums them
(weights from YAML) and ranks replicas by the total. When the pool's load is imbalanced
beyond a threshold, scoring steps aside for power-of-two choices on queue length, so a hot
prefix cannot pile every request onto one replica.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Prefix-index entries a pool keeps per replica unless its router says otherwise.
DEFAULT_MAX_BLOCKS_PER_REPLICA = 1 << 20


@dataclass(frozen=True)
class RequestView:
    """What scoring knows about a request: its hashed size and whether prefixes matter."""

    num_blocks: int
    use_prefix: bool = True
    session_replica: Hashable | None = None  # where this session's last turn went
    adapter: bool = False  # it runs with a LoRA adapter
    new_session: bool = False  # it names a session no candidate replica has served


class ReplicaView(NamedTuple):
    """One candidate replica at decision time. Scoring reads it by position, so the router
    may pass plain tuples in this order (it builds one per candidate per decision)."""

    replica: Hashable
    hit_blocks: int = 0  # leading request blocks this replica holds (from the index)
    queue: int = 0  # requests in flight to it
    pending_tokens: int = 0  # uncached prompt tokens routed to it and not yet finished
    kv_usage: float = 0.0  # engine's KV-cache usage, 0..1, from its last report
    cache_fill: float = 0.0  # share of its KV blocks holding cached prefixes (index), 0..1
    holds_adapter: bool = False  # its engine holds the request's LoRA adapter loaded
    live_sessions: int = 0  # sessions whose last turn it served within `session_live_s`


#: Default weights of the prefix-aware router (prefill and colocated pools): go where the
#: prompt's prefix is cached, unless that replica is loaded.
PREFIX_AWARE_WEIGHTS: dict[str, float] = {"prefix": 2.0, "queue": 1.0, "tokens": 1.0,
                                          "kv_headroom": 0.5, "cache_headroom": 0.0,
                                          "session": 1.0, "session_spread": 0.0,
                                          "adapter": 1.0}
#: Default weights of the decode router: load and KV headroom first.
DECODE_WEIGHTS: dict[str, float] = {"prefix": 1.0, "queue": 1.0, "tokens": 0.5,
                                    "kv_headroom": 2.0, "cache_headroom": 0.0, "session": 0.0,
                                    "session_spread": 0.0, "adapter": 1.0}


class RouterSettings(BaseModel):
    """`request_router_kwargs` of our routers (validated; unknown keys are errors)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: dict[str, float] = Field(
        default_factory=lambda: dict(PREFIX_AWARE_WEIGHTS),
        description="Weight per scorer (names: prefix, queue, tokens, kv_headroom, "
        "cache_headroom, session, session_spread, adapter).",
    )
    queue_scale: float = Field(8.0, gt=0, description="Queue length that scores 0 on `queue`.")
    token_scale: float = Field(
        4096.0, gt=0, description="Pending uncached prompt tokens that score 0 on `tokens`."
    )
    imbalance_threshold: int = Field(
        8, ge=1, description="Queue-length spread beyond which power-of-two choices decides."
    )
    max_sessions: int = Field(100_000, ge=1, description="Session-affinity entries kept (LRU).")
    session_live_s: float = Field(
        300.0, gt=0, description="A session counts as live on its replica (for "
        "`session_spread`) this long after its last turn."
    )
    max_blocks_per_replica: int = Field(
        DEFAULT_MAX_BLOCKS_PER_REPLICA, ge=1,
        description="Index entries kept per replica (bound if events are lost).",
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


#: The scorers, each mapping (request, replica) to [0, 1]; `total_scores` evaluates them in
#: one fused pass (a decision over 64 replicas must stay around 100 us in Python).
SCORERS: dict[str, str] = {
    "prefix": "share of the request's blocks the replica holds (0 when prefixes do not matter)",
    "queue": "1 - requests in flight / queue_scale",
    "tokens": "1 - uncached prompt tokens in flight / token_scale",
    "kv_headroom": "1 - the engine's KV-cache usage",
    "cache_headroom": "1 - share of the engine's blocks holding cached prefixes: new prefixes "
    "go where they evict least (opt-in: after a prefix-cache reset an idle engine publishes "
    "its AllBlocksCleared only at its next step, so its fill reads stale until then)",
    "session": "1 on the replica that served this session last",
    "session_spread": "opt-in: for a session's first turn (no candidate served it), 1 - live "
    "sessions there / the most any candidate serves; 0 when some candidates hold more of the "
    "prompt's prefix than others or its LoRA adapter is loaded on some only (chats keep their "
    "prefixes where they start, so where they start decides whose cache they fill; a prefix "
    "held unevenly may be a conversation this ingress does not know, not to be pulled off it)",
    "adapter": "1 on a replica whose engine holds the request's LoRA adapter loaded (others "
    "would load it first, evicting another when full)",
}


def total_scores(
    request: RequestView, replicas: Sequence[ReplicaView], settings: RouterSettings
) -> list[float]:
    """Σ weight × clamp(score) per replica, in the order of `replicas`."""
    w = settings.weights
    w_prefix = w.get("prefix", 0.0) if request.use_prefix and request.num_blocks else 0.0
    w_queue, w_tokens = w.get("queue", 0.0), w.get("tokens", 0.0)
    w_kv, w_session = w.get("kv_headroom", 0.0), w.get("session", 0.0)
    w_cache = w.get("cache_headroom", 0.0)
    w_adapter = w.get("adapter", 0.0) if request.adapter else 0.0
    per_block = 1.0 / request.num_blocks if request.num_blocks else 0.0
    w_spread = w.get("session_spread", 0.0) if request.new_session else 0.0
    most = max((r[7] for r in replicas), default=0) if w_spread else 0
    per_session = 1.0 / most if most else 0.0
    if per_session and (
        (w_prefix and len({r[1] for r in replicas}) > 1)  # a prefix held unevenly
        or (w_adapter and len({r[6] for r in replicas}) > 1)  # an adapter loaded on some
    ):
        per_session = 0.0  # where the prompt's cache or adapter lives decides, not the count
    per_request, per_token = 1.0 / settings.queue_scale, 1.0 / settings.token_scale
    session = request.session_replica
    totals = []
    for replica, hits, queue, tokens, kv_usage, cache_fill, holds, live in replicas:
        prefix = hits * per_block
        load = 1.0 - queue * per_request
        pending = 1.0 - tokens * per_token
        headroom = 1.0 - kv_usage
        free = 1.0 - cache_fill
        totals.append(
            w_prefix * (prefix if prefix < 1.0 else 1.0)
            + w_queue * (load if load > 0.0 else 0.0)
            + w_tokens * (pending if pending > 0.0 else 0.0)
            + w_kv * (0.0 if headroom < 0.0 else 1.0 if headroom > 1.0 else headroom)
            + w_cache * (0.0 if free < 0.0 else 1.0 if free > 1.0 else free)
            + (w_session if session is not None and replica == session else 0.0)
            + (w_adapter if holds else 0.0)
            + w_spread * (most - live) * per_session
        )
    return totals


def is_imbalanced(replicas: Sequence[ReplicaView], threshold: int) -> bool:
    if not replicas:
        return False
    queues = [r[2] for r in replicas]
    return max(queues) - min(queues) > threshold


def power_of_two(replicas: Sequence[ReplicaView], rng: random.Random) -> list[ReplicaView]:
    """Two random candidates, shorter queue first (Ray's default policy, on our snapshot)."""
    if len(replicas) <= 2:
        return sorted(replicas, key=lambda r: r[2])
    pair = rng.sample(list(replicas), 2)
    return sorted(pair, key=lambda r: r[2])


def _best_index(
    totals: list[float], replicas: Sequence[ReplicaView], rng: random.Random
) -> int:
    """Highest score; ties go to the shorter queue, then fewer pending tokens, then chance
    (so equal replicas share load instead of the first one taking everything)."""
    top = max(totals) - 1e-9
    tied = [i for i, t in enumerate(totals) if t >= top]
    if len(tied) > 1:
        least = min((replicas[i][2], replicas[i][3]) for i in tied)
        tied = [i for i in tied if (replicas[i][2], replicas[i][3]) == least]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def rank(
    request: RequestView,
    replicas: Sequence[ReplicaView],
    settings: RouterSettings,
    rng: random.Random,
) -> list[ReplicaView]:
    """Replicas best first (power-of-two choices when the pool is imbalanced)."""
    remaining = list(replicas)
    if is_imbalanced(remaining, settings.imbalance_threshold):
        return power_of_two(remaining, rng)
    ordered = []
    while remaining:
        best = _best_index(total_scores(request, remaining, settings), remaining, rng)
        ordered.append(remaining.pop(best))
    return ordered


def choose(
    request: RequestView,
    replicas: Sequence[ReplicaView],
    settings: RouterSettings,
    rng: random.Random,
) -> tuple[ReplicaView, list[ReplicaView]]:
    """The best replica and the others as one fallback tier (unordered: Ray picks the
    shortest queue within a tier). Same choice as `rank(...)[0]`, without the full sort."""
    best = choose_index(request, replicas, settings, rng)
    return replicas[best], [r for i, r in enumerate(replicas) if i != best]


def choose_index(
    request: RequestView,
    replicas: Sequence[ReplicaView],
    settings: RouterSettings,
    rng: random.Random,
) -> int:
    """Position of the replica `choose` picks."""
    if is_imbalanced(replicas, settings.imbalance_threshold):
        first = power_of_two(replicas, rng)[0]
        return next(i for i, r in enumerate(replicas) if r is first)
    return _best_index(total_scores(request, replicas, settings), replicas, rng)
