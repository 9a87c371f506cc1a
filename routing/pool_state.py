"""What this process knows about one engine pool: its prefix index (kept exact by the engines'
KV events), the requests it routed there and the engines' last load reports.

A Ray Serve router lives in the process that holds the handle (the ingress), next to the
orchestrator that plans PD requests, so both read one `PoolState` per pool from a registry
keyed by (app, deployment). Reads are lock-protected and never touch the network.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from pdserve.routing.kv_events import KVEventSubscriber
from pdserve.routing.live_sessions import LiveSessions
from pdserve.routing.prefix_index import PrefixIndex
from pdserve.routing.scorers import DEFAULT_MAX_BLOCKS_PER_REPLICA
from pdserve.routing.types import RoutingStats

FILL_REFRESH_S = 0.05


class PoolState:
    """Prefix index + in-flight work of one pool, as seen from this process."""

    def __init__(self, name: str, max_blocks_per_replica: int = DEFAULT_MAX_BLOCKS_PER_REPLICA,
                 follow_kv_events: bool = True) -> None:
        self.name = name
        #: False where only the replica set matters (an engine replica watching its own pool)
        self.follow_kv_events = follow_kv_events
        #: the replicas Ray Serve's router last reported running (a stopping one is not)
        self.members: frozenset[str] = frozenset()
        self.lock = threading.Lock()
        self.index = PrefixIndex(max_blocks_per_replica)
        # Blocks of requests routed but not finished: an engine publishes `BlockStored` only
        # after it computed them, so without this, concurrent requests sharing a new prefix
        # would all look uncached and be spread across replicas.
        self.pending = PrefixIndex(max_blocks_per_replica)
        self._pending_refs: dict[tuple[str, int], int] = {}
        self.block_size: int | None = None
        self.subscriber: KVEventSubscriber | None = None
        self._watched: dict[str, str] = {}
        self.synced = False  # whether a router has reported this pool's replicas yet
        self._kv_usage: dict[str, float] = {}
        self._adapters: dict[str, frozenset[str]] = {}  # replica -> LoRA adapters it holds
        self._capacity: dict[str, int] = {}  # engine KV blocks per replica
        self._fill: dict[str, float] = {}
        self._fill_at = float("-inf")
        self._in_flight: dict[str, dict[str, int]] = {}  # replica -> {request key: tokens}
        self._loads: dict[str, tuple[int, int]] = {}  # replica -> (requests, tokens) in flight
        self._sessions: OrderedDict[str, str] = OrderedDict()
        self._live_sessions = LiveSessions()
        #: how long a session counts as live after its last turn (its router's setting)
        self.session_live_s = 300.0

    # -- replicas and their event streams -------------------------------------------------
    def sync_replicas(self, replicas: Mapping[str, RoutingStats | None]) -> None:
        """Follow the pool's current replicas ({replica: its stats, None before its first
        report}); cheap when unchanged.

        A replica that left is dropped from the index; one whose engine endpoint changed is a
        restart and starts empty.
        """
        self.synced = True
        members = frozenset(replicas)
        changed, self.members = members != self.members, members
        for replica, stats in replicas.items():
            if stats is None:
                self._kv_usage[replica] = 0.0
                continue
            self._kv_usage[replica] = stats.kv_cache_usage
            self._adapters[replica] = frozenset(stats.adapters)
            if stats.num_gpu_blocks:
                self._capacity[replica] = stats.num_gpu_blocks
            endpoint = stats.kv_events_endpoint
            if not endpoint or self._watched.get(replica) == endpoint:
                continue
            subscriber = self._ensure_subscriber(stats.block_size)
            if subscriber is None:
                continue
            self._watched[replica] = endpoint
            subscriber.watch(replica, endpoint, stats.kv_events_replay_endpoint)
        if changed:  # called per decision: look for leavers only when the set moved
            for replica in self._known() - members:
                self.forget(replica)

    def _known(self) -> set[str]:
        """Every replica something here is kept for: its events, its reports, its work, its
        live sessions (a replica without a KV-events stream has no `_watched` entry)."""
        with self.lock:
            live = set(self._live_sessions.replicas())
            working = set(self._in_flight)
        return (set(self._watched) | set(self._kv_usage) | set(self._adapters)
                | set(self._capacity) | live | working)

    def forget(self, replica: str) -> None:
        self.members -= {replica}
        self._watched.pop(replica, None)
        self._kv_usage.pop(replica, None)
        self._adapters.pop(replica, None)
        self._capacity.pop(replica, None)
        if self.subscriber is not None:
            self.subscriber.unwatch(replica)
        with self.lock:
            self._live_sessions.forget(replica)
            self._in_flight.pop(replica, None)
            self._loads.pop(replica, None)
            self.index.remove_replica(replica)
            self.pending.remove_replica(replica)
            for key in [k for k in self._pending_refs if k[0] == replica]:
                del self._pending_refs[key]

    def _ensure_subscriber(self, block_size: int) -> KVEventSubscriber | None:
        if self.subscriber is None and block_size > 0 and self.follow_kv_events:
            self.block_size = block_size
            self.subscriber = KVEventSubscriber(self.index, self.lock, block_size)
        return self.subscriber

    # -- reads for routing and planning ---------------------------------------------------
    def match(self, block_hashes: Sequence[int]) -> dict[str, int]:
        """Leading blocks each replica holds, or will hold once its in-flight requests ran."""
        with self.lock:
            held = self.index.match(block_hashes)
            for replica, blocks in self.pending.match(block_hashes).items():
                if blocks > held.get(replica, 0):
                    held[replica] = blocks
            return held  # type: ignore[return-value]

    def cached(self, block_hashes: Sequence[int]) -> dict[str, int]:
        """Leading blocks each replica reported as stored (engine events only)."""
        with self.lock:
            return self.index.match(block_hashes)  # type: ignore[return-value]

    def best_hit(self, block_hashes: Sequence[int], excluding: Sequence[str] = ()) -> int:
        """The longest match on any replica but `excluding` (those a request may not go to)."""
        return max((blocks for replica, blocks in self.match(block_hashes).items()
                    if replica not in excluding), default=0)

    def kv_usage_all(self) -> dict[str, float]:
        return self._kv_usage

    def adapter_holders(self, adapter: str) -> frozenset[str]:
        """Replicas whose engines reported holding the LoRA adapter `adapter` loaded."""
        return frozenset(r for r, held in self._adapters.items() if adapter in held)

    def cache_fill(self) -> dict[str, float]:
        """Share of each engine's KV blocks holding cached content (indexed / capacity).

        Recomputed at most every `FILL_REFRESH_S`: it moves slowly and only steers new
        prefixes, and a per-decision pass over every replica would double the decision time.
        """
        now = time.monotonic()
        if now - self._fill_at > FILL_REFRESH_S:
            capacity = self._capacity
            with self.lock:
                sizes = self.index.sizes()
            self._fill = {r: n / capacity[r] for r, n in sizes.items() if capacity.get(r)}
            self._fill_at = now
        return self._fill

    def loads(self) -> dict[str, tuple[int, int]]:
        """(requests, uncached tokens) in flight per replica; entries are replaced whole, so
        the live dict is safe to read without copying."""
        return self._loads

    def _update_load(self, replica: str) -> None:
        work = self._in_flight.get(replica)
        if work:
            self._loads[replica] = (len(work), sum(work.values()))
        else:
            self._loads.pop(replica, None)

    def in_flight_total(self) -> int:
        with self.lock:
            return sum(len(v) for v in self._in_flight.values())

    def num_replicas(self) -> int:
        """The replicas the pool's router routes to now, whether or not their KV events are
        followed (0 before a router reported them: see `synced`)."""
        return len(self.members)

    def replica_ids(self) -> list[str]:
        """The running replicas (whether or not their KV events are followed)."""
        return sorted(self.members)

    # -- request lifecycle (router hooks) -------------------------------------------------
    def begin(self, replica: str, request_key: str, uncached_tokens: int,
              block_hashes: Sequence[int] = ()) -> None:
        with self.lock:
            self._in_flight.setdefault(replica, {})[request_key] = uncached_tokens
            self._update_load(replica)
            new = []
            for h in block_hashes:
                refs = self._pending_refs.get((replica, h), 0)
                self._pending_refs[(replica, h)] = refs + 1
                if refs == 0:
                    new.append(h)
            self.pending.store(replica, new)

    def end(self, replica: str, request_key: str, block_hashes: Sequence[int] = ()) -> None:
        with self.lock:
            self._in_flight.get(replica, {}).pop(request_key, None)
            self._update_load(replica)
            done = []
            for h in block_hashes:
                refs = self._pending_refs.pop((replica, h), 0) - 1
                if refs > 0:
                    self._pending_refs[(replica, h)] = refs
                elif refs == 0:
                    done.append(h)
            self.pending.remove(replica, done)

    def session_replica(self, session_id: str | None) -> str | None:
        return self._sessions.get(session_id) if session_id else None

    def remember_session(self, session_id: str | None, replica: str, limit: int) -> None:
        if not session_id:
            return
        self._sessions[session_id] = replica
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > limit:
            self._sessions.popitem(last=False)
        with self.lock:
            self._live_sessions.touch(session_id, replica, time.monotonic(), limit)

    def live_sessions(self) -> dict[str, int]:
        """Sessions per replica whose last turn went there at most `session_live_s` ago."""
        with self.lock:  # counting expires entries: the router's and stats' threads both do
            return self._live_sessions.counts(time.monotonic(), self.session_live_s)

    def snapshot(self) -> dict[str, Any]:
        """Per-replica index size and stream counters (for stats and tests)."""
        streams = self.subscriber.snapshot() if self.subscriber else {}
        with self.lock:
            blocks = {str(r): self.index.num_blocks(r) for r in self.index.replicas()}
            in_flight = {r: len(v) for r, v in self._in_flight.items()}
        return {"block_size": self.block_size, "replicas": sorted(self._watched),
                "blocks": blocks, "streams": streams, "in_flight": in_flight,
                "live_sessions": self.live_sessions(),
                "adapters": {r: sorted(a) for r, a in self._adapters.items()}}


_REGISTRY: dict[tuple[str, str], PoolState] = {}
_REGISTRY_LOCK = threading.Lock()


def pool_state(app: str, deployment: str, max_blocks_per_replica: int | None = None,
               follow_kv_events: bool = True) -> PoolState:
    """The one `PoolState` of (app, deployment) in this process (its first caller sets it up).
    `max_blocks_per_replica` (the pool's router setting) bounds its indexes whoever made it:
    the ingress makes each pool's state before Ray starts the pool's router."""
    with _REGISTRY_LOCK:
        state = _REGISTRY.get((app, deployment))
        if state is None:
            state = PoolState(f"{app}/{deployment}",
                              max_blocks_per_replica or DEFAULT_MAX_BLOCKS_PER_REPLICA,
                              follow_kv_events)
            _REGISTRY[(app, deployment)] = state
        elif max_blocks_per_replica is not None:
            with state.lock:  # (applies from each replica's next stored block)
                state.index.max_blocks_per_replica = max_blocks_per_replica
                state.pending.max_blocks_per_replica = max_blocks_per_replica
        return state

