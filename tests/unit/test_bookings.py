"""A router's bookings: a call counts on one replica from its choice until Ray reports its
end, in whichever order Ray's hooks arrive, and however many calls share a request id."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

from pdserve.routing.bookings import Bookings
from pdserve.routing.pool_state import PoolState


def bookings() -> Bookings:
    return Bookings(PoolState("app/pool"))


class Call:
    """Stands for a call's `PendingRequest`: known by identity, sent once its routing future
    holds a replica (Ray sets it before sending)."""

    def __init__(self, request: str = "req") -> None:
        self.metadata = SimpleNamespace(internal_request_id=request)  # Ray's, shared
        self.future: Future[SimpleNamespace] = Future()

    def send(self, replica: str) -> Call:
        self.future.set_result(SimpleNamespace(replica_id=SimpleNamespace(unique_id=replica)))
        return self

    def retry(self) -> None:
        """Ray's retry after a replica turned the call away: a new routing future."""
        self.future = Future()


def test_routed_then_completed_counts_the_call_until_it_completes() -> None:
    book, call = bookings(), Call()
    assert book.book(call, "r1", 100, (1, 2))
    call.send("r1")
    assert not book.moved(call, "r1")
    assert book.pool.loads() == {"r1": (1, 100)} and book.pool.match([1, 2]) == {"r1": 2}
    book.completed("req", "r1")
    assert book.pool.in_flight_total() == 0 and book.pool.match([1, 2]) == {} and not book


def test_completed_before_routed_stays_released() -> None:
    """Ray's gRPC transport reports a unary call completed before it reports it routed: the
    late routed report must not count the finished call again (it did, and every prefill
    call stayed in flight until the PD plan sent all prompts to the decode engines)."""
    book, call = bookings(), Call()
    book.book(call, "r1", 100, (1,))
    call.send("r1")
    book.completed("req", "r1")
    assert not book.moved(call, "r1")
    assert book.pool.in_flight_total() == 0 and not book


def test_a_call_sent_to_a_lower_tier_is_moved_there_and_ends_there() -> None:
    book, call = bookings(), Call()
    book.book(call, "r1", 100, (7,))
    call.send("r2")
    book.completed("req", "r1")  # an end named elsewhere is not this call's
    assert len(book) == 1
    assert book.moved(call, "r2")
    assert not book.book(call, "r2", 60, (7,))  # same routing future: no second hook
    assert book.pool.loads() == {"r2": (1, 60)} and book.pool.match([7]) == {"r2": 1}
    book.completed("req", "r2")
    book.completed("req", "r2")  # a report for a call no longer booked changes nothing
    assert book.pool.in_flight_total() == 0 and book.pool.match([7]) == {}


def test_completed_before_routed_from_a_lower_tier_ends_the_call() -> None:
    """Sent to a lower tier and reported completed before routed: the end names a replica the
    call is not booked on; its routing future says it went there."""
    book, call = bookings(), Call()
    book.book(call, "r1", 50)
    book.book(Call("other").send("r2"), "r2", 20)
    call.send("r2")
    book.completed("req", "r2")
    assert book.pool.loads().get("r1", (0, 0)) == (0, 0) and book.pool.loads()["r2"] == (1, 20)
    assert not book.moved(call, "r2") and len(book) == 1
    book.completed("nobody", "r2")  # a call this router never chose: nothing
    assert book.pool.loads()["r2"] == (1, 20)


def test_a_shared_prefix_stays_pending_while_any_call_holding_it_runs() -> None:
    book = bookings()
    book.book(Call("a").send("r1"), "r1", 64, (1, 2))
    book.book(Call("b").send("r1"), "r1", 64, (1, 3))
    book.completed("a", "r1")
    assert book.pool.match([1, 2]) == {"r1": 1} and len(book) == 1


def test_calls_sharing_a_request_id_each_count_until_their_own_end() -> None:
    """The prompts of one completion request are concurrent calls with one Ray request id:
    each counts (the second booking replaced the first, so the pool saw one in flight), and an
    end report ends one of those sent to the replica it names."""
    book = bookings()
    calls = [Call() for _ in range(4)]
    for i, call in enumerate(calls):
        assert book.book(call, f"r{i % 2}", 10 * (i + 1), (i,))
    assert book.pool.loads() == {"r0": (2, 40), "r1": (2, 60)}
    for call in calls[1:]:
        call.send(f"r{calls.index(call) % 2}")
    book.completed("req", "r1")
    assert book.pool.loads()["r1"][0] == 1 and book.pool.loads()["r0"] == (2, 40)
    calls[0].future.cancel()
    book.release(calls[0], calls[0].future)  # one never sent: only it goes
    assert book.pool.loads()["r0"] == (1, 30) and len(book) == 2
    book.completed("req", "r0")
    book.completed("req", "r1")
    assert book.pool.in_flight_total() == 0 and not book


def test_a_sibling_still_being_routed_is_not_ended_by_anothers_end() -> None:
    """Two calls of one request chose r1; one is sent and ends while the other still waits
    for its routing (a queue-length probe, a full replica): the end is the sent one's. (Taking
    the other left the ended call booked, and once the other re-chose, booked for good.)"""
    book = bookings()
    waiting, sent = Call(), Call()
    book.book(waiting, "r1", 64)
    book.book(sent, "r1", 64)
    sent.send("r1")
    book.completed("req", "r1")
    assert id(waiting) in book._calls and id(sent) not in book._calls
    assert not book.book(waiting, "r1", 64)  # re-chosen: the same routing future
    waiting.send("r1")
    book.completed("req", "r1")
    assert book.pool.in_flight_total() == 0 and not book


def test_a_retried_call_is_watched_again_and_a_stale_end_or_failure_is_ignored() -> None:
    """A replica turned the call away: Ray cancels that attempt (its end comes late) and
    routes the call again with a new future, which must be watched for failure; the late end
    and the old future's outcome do not end the new attempt."""
    book, call = bookings(), Call()
    assert book.book(call, "r1", 64)
    call.send("r1")
    old = call.future
    call.retry()
    assert book.book(call, "r2", 64)  # a new routing future: watch it
    book.completed("req", "r1")  # the turned-away attempt's end, late
    book.release(call, old)  # an outcome of the old future
    assert book.pool.loads().get("r2") == (1, 64) and len(book) == 1
    call.future.cancel()  # the client leaves while the retry is routed
    book.release(call, call.future)
    assert book.pool.in_flight_total() == 0 and not book


def test_an_uncounted_call_ends_before_a_counted_one_of_the_same_request() -> None:
    """A KV release (no routing information) runs on the replica beside the decode attempt of
    the same request: its end must not end the decode attempt's count."""
    book = bookings()
    decode, release = Call().send("r1"), Call().send("r1")
    book.book(decode, "r1", 50)
    book.book(release, "r1", counted=False)
    assert book.pool.loads() == {"r1": (1, 50)} and len(book) == 2
    book.completed("req", "r1")  # the release ends first
    assert book.pool.loads() == {"r1": (1, 50)} and len(book) == 1
    book.completed("req", "r1")
    assert book.pool.in_flight_total() == 0 and not book
