"""Ray Serve request routers for engine pools, on Ray's public `RequestRouter` API.

`PrefixAwareRouter` (prefill and colocated pools) ranks replicas by the weighted scorers of
`routing/scorers.py`: cached-prefix blocks from the index the engines' KV events keep exact,
against queue, pending uncached tokens and KV usage, with optional session affinity.
`DecodeRouter` (decode pools) weighs load and KV headroom, and prefix overlap only for requests
planned to prefill locally. Select them per pool with Ray's `request_router_config`.

Admin calls (`drained`, `vllm_metrics`, `health`, `nixl_state`, `engine_processes`) may name a
replica with the `replica=<unique id>` keyword; the router sends them there, so each engine can
be inspected.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from ray.serve.metrics import Counter, Histogram
from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from pdserve import tracing
from pdserve.routing.bookings import Bookings
from pdserve.routing.pool_state import PoolState, pool_state
from pdserve.routing.scorers import (
    DECODE_WEIGHTS,
    PREFIX_AWARE_WEIGHTS,
    ReplicaView,
    RequestView,
    RouterSettings,
    choose_index,
)
from pdserve.routing.types import RoutingInfo, RoutingStats

logger = logging.getLogger(__name__)

ADMIN_METHODS = frozenset({"drained", "vllm_metrics", "health", "nixl_state",
                           "engine_processes", "drain", "undrain", "sync_adapters",
                           "loaded_adapters"})
_ROUTE_BOUNDARIES = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2e-2]


class _RouteMetrics:
    """`pdserve_prefix_*` and `pdserve_route_seconds` for one pool."""

    def __init__(self, pool: str) -> None:
        tags = {"pool": pool}
        self.hit = Counter("pdserve_prefix_hit_blocks_total", tag_keys=("pool",),
                           description="Prompt blocks found cached on the chosen replica.")
        self.lookup = Counter("pdserve_prefix_lookup_blocks_total", tag_keys=("pool",),
                              description="Prompt blocks looked up (hit rate = hit / lookup).")
        self.seconds = Histogram("pdserve_route_seconds", boundaries=_ROUTE_BOUNDARIES,
                                 tag_keys=("pool",), description="Routing decision latency.")
        for metric in (self.hit, self.lookup, self.seconds):
            metric.set_default_tags(dict(tags))

    def record(self, lookup: int, hit: int, seconds: float) -> None:
        if lookup:
            self.lookup.inc(lookup)
            if hit:
                self.hit.inc(hit)
        self.seconds.observe(seconds)


def hands_choices_by_request_id(router_class: type) -> bool:
    """Whether Ray hands this router's choices out by internal request id alone (Ray 2.60's
    `RequestRouter` without `FIFOMixin`, e.g. Ray Serve LLM's `PrefixCacheAffinityRouter`):
    calls made concurrently while serving one request share that id, so on such a router all
    of a completion request's prompts but one never get a replica and the request hangs."""
    fulfil = getattr(router_class, "_fulfill_next_pending_request", None)
    return fulfil is RequestRouter._fulfill_next_pending_request


def routing_info(pending_request: PendingRequest | None) -> RoutingInfo | None:
    """The `RoutingInfo` our messages carry (None for admin calls and foreign requests)."""
    if pending_request is None or not pending_request.args:
        return None
    info = getattr(pending_request.args[0], "routing", None)
    return info if isinstance(info, RoutingInfo) else None


def without_avoided(candidates: list[Any], avoid: tuple[str, ...]) -> list[Any]:
    """The candidates a request may go to: not the replicas it lost (their engine died; Ray
    replaces them after its health check) nor those being drained. When only draining ones
    are left besides the lost, a draining one: its flag reaches routers a stats period late
    (it may be undrained already), while the request's own loss is certain. All of them when
    nothing else is left."""
    kept = [r for r in candidates if r.replica_id.unique_id not in avoid]
    ready = [r for r in kept if not (r.routing_stats or {}).get("draining")]
    return ready or kept or candidates


class ScoredRouter(RequestRouter):
    """Shared machinery: pinning, snapshot building, ranking, in-flight bookkeeping."""

    default_weights: dict[str, float] = {}
    #: Does a request planned for remote prefill still care about cached prefixes here?
    prefix_only_when_local: bool = False

    def initialize_state(self, **kwargs: Any) -> None:
        if "weights" not in kwargs and self.default_weights:
            kwargs = {**kwargs, "weights": self.default_weights}
        self.settings = RouterSettings.model_validate(kwargs)
        self.pool: PoolState = pool_state(
            self._deployment_id.app_name, self._deployment_id.name,
            self.settings.max_blocks_per_replica,
        )
        self.pool.session_live_s = self.settings.session_live_s
        self.rng = random.Random()
        self.metrics = _RouteMetrics(self._deployment_id.name)
        self.bookings = Bookings(self.pool)

    # -- replica set ----------------------------------------------------------------------
    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._sync()

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.pool.forget(replica_id.unique_id)

    def _sync(self) -> None:
        self.pool.sync_replicas({rid.unique_id: RoutingStats.decode(r.routing_stats)
                                 for rid, r in self._replicas.items()})

    # -- the decision -----------------------------------------------------------------------
    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        pinned = self._pinned(candidate_replicas, pending_request)
        if pinned is not None:
            return pinned
        started = time.perf_counter()
        self._sync()
        info = routing_info(pending_request)
        candidate_replicas = without_avoided(candidate_replicas,
                                             info.avoid if info is not None else ())
        best, others, hits = self.choose(candidate_replicas, info)
        if info is None and pending_request is not None:
            self._book(pending_request, best.replica_id.unique_id, None)
        if info is not None and pending_request is not None:
            rid = best.replica_id.unique_id
            use_prefix = self._uses_prefix(info)
            self._book(pending_request, rid, info, hits.get(rid, 0) if use_prefix else None)
            lookup = len(info.block_hashes) if use_prefix else 0
            decided_s = time.perf_counter() - started
            self.metrics.record(lookup, min(hits.get(rid, 0), lookup), decided_s)
            self._trace(pending_request, info, rid, len(candidate_replicas), lookup,
                        hits, decided_s)
        return [[best], others] if others else [[best]]

    def _trace(self, pending_request: PendingRequest, info: RoutingInfo, chosen: str,
               candidates: int, lookup: int, hits: dict[str, int], decided_s: float) -> None:
        """The decision as a span under Ray's `route_to_replica` span of the call (whose
        context Ray's router put in the request's metadata; this runs in its own task)."""
        parent = tracing.context_of(pending_request.metadata.tracing_context)
        if parent is None:
            return
        end_ns = time.time_ns()
        tracing.tracer().start_span(
            f"pdserve.route {self._deployment_id.name}", context=parent,
            start_time=end_ns - int(decided_s * 1e9), attributes={
                "pdserve.route.replica": chosen, "pdserve.route.candidates": candidates,
                "pdserve.route.plan": info.plan or "", "pdserve.route.lookup_blocks": lookup,
                "pdserve.route.prefix_hit_blocks": min(hits.get(chosen, 0), lookup),
                "pdserve.route.best_hit_blocks": min(max(hits.values(), default=0), lookup),
                "pdserve.route.decision_s": decided_s,
            }).end(end_ns)

    def choose(
        self, candidates: list[RunningReplica], info: RoutingInfo | None
    ) -> tuple[RunningReplica, list[RunningReplica], dict[str, int]]:
        """The best candidate, the rest, and the cached-prefix blocks per replica it scored
        with (pure scoring over a snapshot of this pool)."""
        use_prefix = info is not None and self._uses_prefix(info)
        hashes = info.block_hashes if info is not None else ()
        hits = self.pool.match(hashes) if use_prefix and hashes else {}
        ids = [r.replica_id.unique_id for r in candidates]
        loads, usage = self.pool.loads(), self.pool.kv_usage_all()
        fill = self.pool.cache_fill() if self.settings.weights.get("cache_headroom") else {}
        adapter = info.adapter if info is not None else None
        holders = self.pool.adapter_holders(adapter) if adapter else frozenset()
        idle = (0, 0)
        session = info.session_id if info is not None else None
        session_replica = self.pool.session_replica(session)
        # a session whose replica is not a candidate (gone, drained) starts afresh too
        new_session = bool(session) and session_replica not in ids
        live = (self.pool.live_sessions()
                if new_session and self.settings.weights.get("session_spread") else {})
        views: list[ReplicaView] = [
            (rid, hits.get(rid, 0), *loads.get(rid, idle), usage.get(rid, 0.0),  # type: ignore[misc]
             fill.get(rid, 0.0), rid in holders, live.get(rid, 0))
            for rid in ids
        ]
        request = RequestView(
            num_blocks=len(hashes),
            use_prefix=use_prefix,
            session_replica=session_replica,
            adapter=adapter is not None,
            new_session=new_session,
        )
        best = choose_index(request, views, self.settings, self.rng)
        return candidates[best], candidates[:best] + candidates[best + 1 :], hits

    def _uses_prefix(self, info: RoutingInfo) -> bool:
        return not self.prefix_only_when_local or info.plan != "remote"

    def _pinned(
        self, candidates: list[RunningReplica], pending_request: PendingRequest | None
    ) -> list[list[RunningReplica]] | None:
        if pending_request is None:
            return None
        target = pending_request.kwargs.get("replica")
        if target is None or pending_request.metadata.call_method not in ADMIN_METHODS:
            return None
        chosen = [r for r in candidates if r.replica_id.unique_id == target]
        if chosen:
            self._book(pending_request, target, None)
        return [chosen] if chosen else []

    def _fulfill_next_pending_request(
        self, replica: RunningReplica, request_metadata: Any = None
    ) -> None:
        """Hands a chosen replica to the very call it was chosen for. Ray's `RequestRouter`
        hands it to the pending call with the same internal request id, which every call made
        while serving one request shares: of a completion request's prompts, all but one
        never got a replica (their routing tasks spun without pause, the request hung and the
        caller's event loop starved). Calls are matched by their metadata object (one per
        call) here; a choice whose call is gone meanwhile (cancelled) goes to nobody, as in
        Ray's when nothing matches, rather than to a sibling that chose otherwise. A scan of
        the calls waiting in this router, where Ray looks up a dict. Relies on Ray's private
        router internals (pinned by `tests/unit/test_router_ray_internals.py`)."""
        for pending in self._pending_requests_to_fulfill:
            if pending.metadata is request_metadata and not pending.future.done():
                self._cancel_routing_task_for_pending_request(pending)
                self._record_queue_wait_time(pending)
                pending.future.set_result(replica)
                self._remove_pending_request_from_indices(pending)
                return

    # -- lifecycle (see `routing/bookings.py` for the order Ray reports it in) -----------------
    def _book(
        self, pending_request: PendingRequest, replica: str, info: RoutingInfo | None,
        hits: int | None = None,
    ) -> None:
        """`hits`: the replica's cached-prefix blocks if the caller already looked them up. A
        call without routing information (`info` None) is counted nowhere, but tracked: its end
        must not end a counted call of the same request (`routing/bookings.py`)."""
        if info is None:
            new_future = self.bookings.book(pending_request, replica, counted=False)
        else:
            if hits is None:
                hits = (self.pool.match(info.block_hashes).get(replica, 0)
                        if info.block_hashes else 0)
            uncached = max(0, info.prompt_tokens - hits * (self.pool.block_size or 0))
            new_future = self.bookings.book(pending_request, replica, uncached,
                                            info.block_hashes)
        if new_future:  # release the call if this routing future fails (never sent)
            pending_request.future.add_done_callback(
                lambda f: self._release_unrouted(pending_request, f))

    def _release_unrouted(self, pending_request: PendingRequest, future: Any) -> None:
        if future.cancelled() or future.exception() is not None:
            self.bookings.release(pending_request, future)

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        info = routing_info(pending_request)
        rid = replica_id.unique_id
        if self.bookings.moved(pending_request, rid):
            self._book(pending_request, rid, info)
        if info is not None:
            self.pool.remember_session(info.session_id, rid, self.settings.max_sessions)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.bookings.completed(internal_request_id, replica_id.unique_id)


class PrefixAwareRouter(ScoredRouter):
    """Prefill and colocated pools: go where the prompt's prefix is cached, unless loaded."""

    default_weights = PREFIX_AWARE_WEIGHTS


class DecodeRouter(ScoredRouter):
    """Decode pools: load and KV headroom first; prefix overlap only for local prefills."""

    default_weights = DECODE_WEIGHTS
    prefix_only_when_local = True
