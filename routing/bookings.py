"""Which replica each request routed by one router is counted on, whatever order Ray reports
the request's routing and completion in.

A request counts as in flight on its replica (in the pool's `PoolState`) from the moment the
router chooses it, not when Ray has sent it: otherwise requests arriving together all see the
same idle pool and pile onto one replica. Ray then reports the request through hooks keyed by
its internal request id, and their order depends on the transport: over Ray's gRPC transport a
unary call's response comes back with its acceptance, so Ray reports it completed *before* it
reports it routed (measured on Ray 2.60; pinned by the router's integration tests). A routed
report for a request no longer booked is therefore a finished request, never a new booking.

Ray shares one internal id among the calls one replica makes while handling one request; a
router sees one call per request of a caller (a PD request calls each pool once), so the id is
a key here.
"""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.routing.pool_state import PoolState


class Bookings:
    """Requests in flight through one router, each booked on one replica of `pool`."""

    def __init__(self, pool: PoolState) -> None:
        self.pool = pool
        self._booked: dict[str, tuple[str, tuple[int, ...]]] = {}  # key -> (replica, blocks)

    def book(self, key: str, replica: str, uncached_tokens: int,
             block_hashes: Sequence[int] = ()) -> bool:
        """Count `key` on `replica` (moving it if it was booked elsewhere); True if it was not
        booked before (the first choice for this request)."""
        previous = self._booked.pop(key, None)
        if previous is not None:
            self.pool.end(previous[0], key, previous[1])
        blocks = tuple(block_hashes)
        self.pool.begin(replica, key, uncached_tokens, blocks)
        self._booked[key] = (replica, blocks)
        return previous is None

    def moved(self, key: str, replica: str) -> bool:
        """Ray reports `key` sent to `replica`: True if it is booked on another replica (Ray
        fell back to a lower tier of the ranking), so it must be booked again there. False if
        it is booked there, or no longer booked: it already completed."""
        booked = self._booked.get(key)
        return booked is not None and booked[0] != replica

    def release(self, key: str) -> None:
        """The request finished, failed or was never sent: it no longer counts anywhere.
        Idempotent, since Ray may report an end more than once (completion, then a failed
        routing future)."""
        booked = self._booked.pop(key, None)
        if booked is not None:
            self.pool.end(booked[0], key, booked[1])

    def __len__(self) -> int:
        return len(self._booked)
