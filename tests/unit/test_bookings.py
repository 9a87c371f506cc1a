"""A router's bookings: a request counts on one replica from its choice until Ray reports its
end, in whichever order Ray's hooks arrive."""

from __future__ import annotations

from pdserve.routing.bookings import Bookings
from pdserve.routing.pool_state import PoolState


def bookings() -> Bookings:
    return Bookings(PoolState("app/pool"))


def test_routed_then_completed_counts_the_request_until_it_completes() -> None:
    book = bookings()
    assert book.book("req", "r1", 100, (1, 2))
    assert not book.moved("req", "r1")
    assert book.pool.loads() == {"r1": (1, 100)} and book.pool.match([1, 2]) == {"r1": 2}
    book.release("req")
    assert book.pool.in_flight_total() == 0 and book.pool.match([1, 2]) == {} and not book


def test_completed_before_routed_stays_released() -> None:
    """Ray's gRPC transport reports a unary call completed before it reports it routed: the
    late routed report must not count the finished request again (it did, and every prefill
    call stayed in flight until the PD plan sent all prompts to the decode engines)."""
    book = bookings()
    book.book("req", "r1", 100, (1,))
    book.release("req")
    assert not book.moved("req", "r1")
    assert book.pool.in_flight_total() == 0 and not book


def test_a_request_sent_to_a_lower_tier_is_moved_there() -> None:
    book = bookings()
    book.book("req", "r1", 100, (7,))
    assert book.moved("req", "r2")
    assert not book.book("req", "r2", 60, (7,))  # not the first choice: no second release hook
    assert book.pool.loads() == {"r2": (1, 60)} and book.pool.match([7]) == {"r2": 1}
    book.release("req")
    book.release("req")  # a second end report (e.g. the routing future failing) is harmless
    assert book.pool.in_flight_total() == 0 and book.pool.match([7]) == {}


def test_a_shared_prefix_stays_pending_while_any_request_holding_it_runs() -> None:
    book = bookings()
    book.book("a", "r1", 64, (1, 2))
    book.book("b", "r1", 64, (1, 3))
    book.release("a")
    assert book.pool.match([1, 2]) == {"r1": 1} and len(book) == 1
