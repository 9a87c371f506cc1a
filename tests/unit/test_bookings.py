"""A router's bookings: a call counts on one replica from its choice until Ray reports its
end, in whichever order Ray's hooks arrive, and however many calls share a request id."""

from __future__ import annotations

from pdserve.routing.bookings import Bookings
from pdserve.routing.pool_state import PoolState


def bookings() -> Bookings:
    return Bookings(PoolState("app/pool"))


class Call:
    """Stands for a call's `PendingRequest`: bookings know a call by identity."""


def test_routed_then_completed_counts_the_call_until_it_completes() -> None:
    book, call = bookings(), Call()
    assert book.book(call, "req", "r1", 100, (1, 2))
    assert not book.moved(call, "r1")
    assert book.pool.loads() == {"r1": (1, 100)} and book.pool.match([1, 2]) == {"r1": 2}
    book.completed("req", "r1")
    assert book.pool.in_flight_total() == 0 and book.pool.match([1, 2]) == {} and not book


def test_completed_before_routed_stays_released() -> None:
    """Ray's gRPC transport reports a unary call completed before it reports it routed: the
    late routed report must not count the finished call again (it did, and every prefill
    call stayed in flight until the PD plan sent all prompts to the decode engines)."""
    book, call = bookings(), Call()
    book.book(call, "req", "r1", 100, (1,))
    book.completed("req", "r1")
    assert not book.moved(call, "r1")
    assert book.pool.in_flight_total() == 0 and not book


def test_a_call_sent_to_a_lower_tier_is_moved_there() -> None:
    book, call = bookings(), Call()
    book.book(call, "req", "r1", 100, (7,))
    assert book.moved(call, "r2")
    assert not book.book(call, "req", "r2", 60, (7,))  # not the first choice: no second hook
    assert book.pool.loads() == {"r2": (1, 60)} and book.pool.match([7]) == {"r2": 1}
    book.completed("req", "r2")
    book.completed("req", "r2")  # a report for a call no longer booked changes nothing
    book.release(call)  # nor does a failed routing future after the end
    assert book.pool.in_flight_total() == 0 and book.pool.match([7]) == {}


def test_a_shared_prefix_stays_pending_while_any_call_holding_it_runs() -> None:
    book = bookings()
    book.book(Call(), "a", "r1", 64, (1, 2))
    book.book(Call(), "b", "r1", 64, (1, 3))
    book.completed("a", "r1")
    assert book.pool.match([1, 2]) == {"r1": 1} and len(book) == 1


def test_calls_sharing_a_request_id_each_count_until_their_own_end() -> None:
    """The prompts of one completion request are concurrent calls with one Ray request id:
    each counts (the second booking replaced the first, so the pool saw one in flight), and an
    end report ends one of them, on the replica it names."""
    book = bookings()
    calls = [Call() for _ in range(4)]
    for i, call in enumerate(calls):
        assert book.book(call, "req", f"r{i % 2}", 10 * (i + 1), (i,))
    assert book.pool.loads() == {"r0": (2, 40), "r1": (2, 60)}
    book.completed("req", "r1")
    assert book.pool.loads()["r1"][0] == 1 and book.pool.loads()["r0"] == (2, 40)
    book.release(calls[0])  # one never sent: only it goes
    assert book.pool.loads()["r0"] == (1, 30) and len(book) == 2
    book.completed("req", "r0")
    book.completed("req", "r1")
    assert book.pool.in_flight_total() == 0 and not book


def test_an_uncounted_call_ends_before_a_counted_one_of_the_same_request() -> None:
    """A KV release (no routing information) runs on the replica beside the decode attempt of
    the same request: its end must not end the decode attempt's count."""
    book = bookings()
    decode, release = Call(), Call()
    book.book(decode, "req", "r1", 50)
    book.book(release, "req", "r1", counted=False)
    assert book.pool.loads() == {"r1": (1, 50)} and len(book) == 2
    book.completed("req", "r1")  # the release ends first
    assert book.pool.loads() == {"r1": (1, 50)} and len(book) == 1
    book.completed("req", "r1")
    assert book.pool.in_flight_total() == 0 and not book


def test_an_end_on_a_replica_not_booked_ends_a_call_of_that_request() -> None:
    """Ray sent the call to a lower tier and reported it completed before routed: its end
    names a replica it is not booked on, and still ends it (nothing else would)."""
    book, call = bookings(), Call()
    book.book(call, "req", "r1", 50)
    book.book(Call(), "other", "r2", 20)
    book.completed("req", "r2")
    assert book.pool.loads().get("r1", (0, 0)) == (0, 0) and book.pool.loads()["r2"] == (1, 20)
    assert not book.moved(call, "r2") and len(book) == 1
    book.completed("nobody", "r2")  # a call this router never chose: nothing
    assert book.pool.loads()["r2"] == (1, 20)
