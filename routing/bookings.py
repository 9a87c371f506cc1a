"""Which replica each call routed by one router is counted on, whatever order Ray reports the
call's routing and completion in.

A call counts as in flight on its replica (in the pool's `PoolState`) from the moment the
router chooses it, not when Ray has sent it: otherwise calls arriving together all see the
same idle pool and pile onto one replica. Ray then reports the call through two hooks: routed
(with the call's `PendingRequest`) and completed (with only the replica and Ray's internal
request id). Their order depends on the transport: over Ray's gRPC transport a unary call's
response comes back with its acceptance, so Ray reports it completed *before* it reports it
routed (measured on Ray 2.60; pinned by the router's integration tests). A routed report for a
call no longer booked is therefore a finished call, never a new booking.

Ray's internal request id is no key: it is the id of the request the *caller* is serving, so
every call made while serving one request shares it — the prompts of one completion request
run concurrently, a KV release runs beside the decode attempt that replaced its prefill. Calls
are therefore booked one by one (by their `PendingRequest`), and an end report takes a call of
that request that Ray *sent* to that replica: one whose routing future holds that replica
(Ray sets it before sending). A call still being routed (its future pending: chosen but not
yet sent, or retried after a replica turned it away) is never taken by an end, so a sibling's
end cannot end it. A call sent without routing information (an admin call, a KV release) is
tracked too, uncounted, so that its end does not end a counted call beside it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pdserve.routing.pool_state import PoolState


def sent_to(call: Any) -> str | None:
    """The replica Ray sent `call` to: its routing future's result, once set."""
    future = call.future
    if not future.done() or future.cancelled() or future.exception() is not None:
        return None
    return future.result().replica_id.unique_id


@dataclass
class _Booking:
    call: Any  # the call's `PendingRequest` (held so that its id() stays unique)
    request: str  # Ray's internal request id, shared by the calls of one request
    replica: str
    key: str  # this call's key in the pool's in-flight work
    blocks: tuple[int, ...]
    counted: bool  # in the pool's loads (False: a call without routing information)
    future: Any  # the routing future the call had when booked (Ray resets it on a retry)


class Bookings:
    """Calls in flight through one router, each booked on one replica of `pool`."""

    def __init__(self, pool: PoolState) -> None:
        self.pool = pool
        self._calls: dict[int, _Booking] = {}  # id(call) -> booking
        self._by_request: dict[str, dict[int, _Booking]] = {}  # in booking order
        self._serial = itertools.count()

    def book(self, call: Any, replica: str, uncached_tokens: int = 0,
             block_hashes: Sequence[int] = (), counted: bool = True) -> bool:
        """Count `call` on `replica`, moving it if it was booked elsewhere; with
        `counted=False` only remember where it went. True if the call's routing future is new
        here (its first choice, or a retry's): the caller watches it for a failure."""
        previous = self._pop(id(call))
        request = call.metadata.internal_request_id
        booking = _Booking(call, request, replica, f"{request}#{next(self._serial)}",
                           tuple(block_hashes), counted, call.future)
        if counted:
            self.pool.begin(replica, booking.key, uncached_tokens, booking.blocks)
        self._calls[id(call)] = booking
        self._by_request.setdefault(request, {})[id(call)] = booking
        return previous is None or previous.future is not call.future

    def moved(self, call: Any, replica: str) -> bool:
        """Ray reports `call` sent to `replica`: True if it is booked on another replica (Ray
        fell back to a lower tier of the ranking), so it must be booked again there. False if
        it is booked there, or no longer booked: it already completed."""
        booked = self._calls.get(id(call))
        return booked is not None and booked.replica != replica

    def release(self, call: Any, future: Any) -> None:
        """`call`'s routing `future` failed (it was never sent): it no longer counts anywhere,
        unless Ray has given the call a new future since (a retry, booked again)."""
        if call.future is future:
            self._pop(id(call))

    def completed(self, request: str, replica: str) -> None:
        """Ray reports that a call of `request` ended on `replica`, naming no call: one of its
        calls Ray sent there, an uncounted one first (those are short). Nothing if it has none
        (a call this router never chose, or one Ray turned away and is routing again)."""
        sent = [key for key, b in self._by_request.get(request, {}).items()
                if sent_to(b.call) == replica]
        if sent:
            uncounted = [key for key in sent if not self._calls[key].counted]
            self._pop((uncounted or sent)[0])

    def _pop(self, key: int) -> _Booking | None:
        booking = self._calls.pop(key, None)
        if booking is None:
            return None
        mine = self._by_request[booking.request]
        del mine[key]
        if not mine:
            del self._by_request[booking.request]
        if booking.counted:
            self.pool.end(booking.replica, booking.key, booking.blocks)
        return booking

    def __len__(self) -> int:
        return len(self._calls)
