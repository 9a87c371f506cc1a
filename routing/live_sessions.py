"""How many chat sessions each replica is serving now, so a new session can go where fewest are.

Session affinity keeps a session's turns on the replica that holds its prefix, but a session's
first turn has no prefix anywhere and, at light load, every replica's queue reads the same: it
lands by chance, and chance puts 4 or 5 of 6 live chats on one of 2 replicas often enough that
their prefixes outgrow that engine's cache while the other's sits half empty (at ~40 blocks a
chat and 192 blocks an engine, 5 of 6 do; near their last turns 4 do). A session counts
as live here for `window_s` after its last turn (sessions end without saying so).
"""

from __future__ import annotations

from collections import Counter, OrderedDict


class LiveSessions:
    """Sessions by last turn, oldest first, and the live ones' count per replica (O(1) per
    turn; expiry pops from the old end). Not thread-safe: `PoolState` holds its lock."""

    def __init__(self) -> None:
        self._last: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._per_replica: Counter[str] = Counter()

    def touch(self, session_id: str, replica: str, now: float, limit: int) -> None:
        """A turn of `session_id` went to `replica` at `now` (keeps at most `limit`)."""
        previous = self._last.pop(session_id, None)
        if previous is not None:
            self._drop(previous[0])
        self._last[session_id] = (replica, now)
        self._per_replica[replica] += 1
        while len(self._last) > limit:
            self._drop(self._last.popitem(last=False)[1][0])

    def counts(self, now: float, window_s: float) -> dict[str, int]:
        """Live sessions per replica: those whose last turn is at most `window_s` old."""
        while self._last:
            replica, last = next(iter(self._last.values()))
            if now - last <= window_s:
                break
            self._last.popitem(last=False)
            self._drop(replica)
        return dict(self._per_replica)

    def replicas(self) -> list[str]:
        """Replicas with a remembered session (live, or not yet expired by `counts`)."""
        return list(self._per_replica)

    def forget(self, replica: str) -> None:
        """`replica` is gone: its sessions are live nowhere (O(sessions); replicas rarely go)."""
        for session_id in [s for s, (r, _) in self._last.items() if r == replica]:
            del self._last[session_id]
        self._per_replica.pop(replica, None)

    def _drop(self, replica: str) -> None:
        self._per_replica[replica] -= 1
        if self._per_replica[replica] <= 0:
            del self._per_replica[replica]
