"""Per-key rate limits: bucket arithmetic, one replica's admission, and the shared ledger."""

from __future__ import annotations

import pytest

from pdserve.deployments.api.buckets import Bucket, retry_after
from pdserve.deployments.api.keys import Caller
from pdserve.deployments.api.ledger import LedgerBooks, LedgerLink
from pdserve.deployments.api.quotas import Quotas
from pdserve.deployments.config.security import RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def caller(name: str = "k", **limits: int) -> Caller:
    return Caller(name, frozenset({"inference"}), None, f"key:{name}", RateLimits(**limits))


def test_bucket_refills_evenly_and_caps_at_a_minute() -> None:
    bucket = Bucket.full(60, now=0)
    bucket.take(60, now=0)
    assert bucket.refill(now=30) == 30
    assert bucket.refill(now=600) == 60  # never more than a minute's worth
    bucket.take(90, now=600)  # a debt (tokens known only at the end)
    assert bucket.refill(now=600) == -30
    assert bucket.seconds_until(1, now=600) == 31
    assert retry_after(0.2) == "1" and retry_after(30.1) == "31"


def test_requests_per_minute_window_edges() -> None:
    clock = Clock()
    quotas = Quotas(clock)
    key = caller(requests_per_minute=2)
    assert quotas.admit(key) is None and quotas.admit(key) is None
    refused = quotas.admit(key)
    assert refused is not None and refused.status_code == 429
    assert refused.headers["retry-after"] == "30"  # one request refills in 30 s
    assert b"rate_limit_exceeded" in refused.body
    clock.now += 29.9
    assert quotas.admit(key) is not None
    clock.now += 0.1
    assert quotas.admit(key) is None
    assert quotas.admit(caller("other", requests_per_minute=2)) is None  # its own budget


def test_tokens_per_minute_debits_at_the_end_and_blocks_until_paid() -> None:
    clock = Clock()
    quotas = Quotas(clock)
    key = caller(tokens_per_minute=600)
    assert quotas.admit(key) is None
    quotas.finish(key, 900)  # a long stream: 300 over
    refused = quotas.admit(key)
    assert refused is not None and refused.headers["retry-after"] == "31"
    clock.now += 31
    assert quotas.admit(key) is None


def test_concurrent_requests() -> None:
    quotas = Quotas(Clock())
    key = caller(concurrent_requests=1)
    assert quotas.admit(key) is None
    assert quotas.admit(key) is not None
    quotas.finish(key, 10)
    assert quotas.admit(key) is None


def test_new_limits_for_a_key_take_effect() -> None:
    quotas = Quotas(Clock())
    assert quotas.admit(caller(requests_per_minute=1)) is None
    assert quotas.admit(caller(requests_per_minute=1)) is not None
    assert quotas.admit(caller(requests_per_minute=5)) is None  # the file was edited


def test_requests_in_flight_survive_a_change_of_limits() -> None:
    quotas = Quotas(Clock())
    for _ in range(2):
        assert quotas.admit(caller(concurrent_requests=2)) is None
    assert quotas.admit(caller(concurrent_requests=3)) is None  # raised while 2 run
    assert quotas.admit(caller(concurrent_requests=3)) is not None  # 3 in flight
    for _ in range(3):
        quotas.finish(caller(concurrent_requests=3), 1)
    assert quotas.take_pending()[0]["k"] == (3.0, 3.0)


def exchange_all(books: LedgerBooks, replicas: list[Quotas], now: float) -> None:
    """One round of what each replica's `LedgerLink` does every second."""
    for i, quotas in enumerate(replicas):
        usage, limits = quotas.take_pending()
        others, first = books.exchange(f"r{i}", usage, limits, now=now)
        quotas.take_others(others)
        quotas.cap_levels(first, usage)


def test_two_replicas_share_one_budget_through_the_ledger() -> None:
    clock = Clock()
    books = LedgerBooks()
    replicas = [Quotas(clock), Quotas(clock)]
    key = caller(requests_per_minute=4)
    assert replicas[0].admit(key) is None and replicas[0].admit(key) is None
    assert replicas[1].admit(key) is None
    exchange_all(books, replicas, clock.now)  # replica 1 meets the key: 2 used elsewhere
    exchange_all(books, replicas, clock.now)  # replica 0 learns of replica 1's request
    assert replicas[1].admit(key) is None  # the 4th of the minute
    exchange_all(books, replicas, clock.now)  # replica 0 traded first: it learns next round
    exchange_all(books, replicas, clock.now)  # (till then it could admit one: the overshoot)
    assert replicas[0].admit(key) is not None
    assert replicas[1].admit(key) is not None
    clock.now += 15  # one request refilled, for both
    assert replicas[0].admit(key) is None
    exchange_all(books, replicas, clock.now)
    assert replicas[1].admit(key) is not None


def test_a_replica_meeting_a_key_late_learns_its_minute() -> None:
    clock = Clock()
    books = LedgerBooks()
    replicas = [Quotas(clock), Quotas(clock)]
    key = caller(tokens_per_minute=600)
    assert replicas[0].admit(key) is None
    replicas[0].finish(key, 600)  # the whole minute spent on replica 0
    exchange_all(books, replicas, clock.now)
    assert replicas[1].admit(key) is None  # replica 1 has not met the key: admits once
    replicas[1].finish(key, 10)
    exchange_all(books, replicas, clock.now)  # ... and learns the minute is spent
    refused = replicas[1].admit(key)
    assert refused is not None and int(refused.headers["retry-after"]) >= 1


def test_a_restarted_ledger_forgets_only_the_exchange_in_flight() -> None:
    clock = Clock()
    replicas = [Quotas(clock), Quotas(clock)]
    key = caller(requests_per_minute=2)
    exchange_all(LedgerBooks(), replicas, clock.now)
    assert replicas[0].admit(key) is None and replicas[0].admit(key) is None
    exchange_all(LedgerBooks(), replicas, clock.now)  # a new, empty ledger
    assert replicas[0].admit(key) is not None  # replica 0's own buckets remember


def test_the_first_replica_to_report_a_key_keeps_its_own_buckets() -> None:
    """The ledger's buckets start when a key is first reported, a second or more after the
    replica's: capping by them would lose that refill (a client that waited its
    `Retry-After` was refused again, found by the end-to-end test)."""
    clock = Clock()
    books = LedgerBooks()
    quotas = Quotas(clock)
    key = caller(requests_per_minute=3)
    for _ in range(3):
        assert quotas.admit(key) is None
        clock.now += 0.5
    refused = quotas.admit(key)
    assert refused is not None
    wait = int(refused.headers["retry-after"])
    clock.now += 1.5  # the first exchange comes late
    usage, limits = quotas.take_pending()
    others, first = books.exchange("r0", usage, limits, now=clock.now)
    assert first == {} and others == {}
    clock.now += wait - 1.5
    assert quotas.admit(key) is None


def test_a_replica_meeting_a_key_asks_the_ledger_before_admitting() -> None:
    import asyncio

    clock = Clock()
    books = LedgerBooks()
    first, second = Quotas(clock), Quotas(clock)
    key = caller(requests_per_minute=2)
    exchange_all(books, [first], clock.now)
    assert first.admit(key) is None and first.admit(key) is None
    exchange_all(books, [first], clock.now)  # replica 0 reported the minute spent

    class Remote:
        async def remote(self, *args: object) -> object:
            return books.exchange(*args, now=clock.now)  # type: ignore[arg-type]

    class Ledger:
        exchange = Remote()

    link = LedgerLink(second, "app")
    link._connect = lambda: Ledger  # type: ignore[method-assign]
    asyncio.run(link.meet(key))
    assert second.admit(key) is not None  # no fresh minute on the other replica


def test_a_slow_ledger_delays_a_first_request_at_most_the_meeting_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from pdserve.deployments.api import ledger

    class Remote:
        async def remote(self, *args: object) -> object:
            await asyncio.sleep(60)

    class Slow:
        exchange = Remote()

    monkeypatch.setattr(ledger, "MEET_TIMEOUT_S", 0.1)
    quotas = Quotas(Clock())
    link = LedgerLink(quotas, "app")
    link._connect = lambda: Slow  # type: ignore[method-assign]
    key = caller(requests_per_minute=1)
    asyncio.run(link.meet(key))  # returns, raising nothing
    assert quotas.admit(key) is None and quotas.admit(key) is not None  # limits locally
