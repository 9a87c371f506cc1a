"""A replica notices that Ray Serve is stopping it: its id was in its pool's running set and
then left it (confirmed), never merely because it has not appeared yet or the set is empty."""

from __future__ import annotations

import asyncio

from pdserve.decode.stopping import wait_until_removed
from pdserve.routing.pool_state import PoolState
from pdserve.routing.types import RoutingStats


def looks(*sets: set[str]) -> tuple[list[int], object]:
    """Feed the sets one per look (the last one repeats); return on which looks it returned."""
    calls: list[int] = []

    def members() -> set[str]:
        calls.append(1)
        return sets[min(len(calls), len(sets)) - 1]

    return calls, members


def run(members: object, timeout_s: float = 0.5) -> bool:
    async def go() -> bool:
        try:
            await asyncio.wait_for(wait_until_removed(members, "me", 0.001), timeout_s)
        except TimeoutError:
            return False
        return True

    return asyncio.run(go())  # type: ignore[arg-type]


def test_a_replica_that_left_the_running_set_is_being_stopped() -> None:
    calls, members = looks(set(), {"me", "b"}, {"me", "b"}, {"b"})
    assert run(members)
    assert len(calls) == 5  # the absence was confirmed by a second look


def test_not_yet_running_an_empty_set_or_a_blip_is_not_a_stop() -> None:
    assert not run(looks(set(), {"b"})[1])  # never seen in the set: it is still starting
    assert not run(looks({"me"}, set())[1])  # the whole pool went away: nowhere to drain to
    assert not run(looks({"me"}, {"b"}, {"me", "b"})[1])  # one look only, then back


def test_the_pool_state_reports_its_members_without_following_kv_events() -> None:
    pool = PoolState("app/pool", follow_kv_events=False)
    stats = RoutingStats(replica="me", block_size=16, kv_events_endpoint="tcp://127.0.0.1:1")
    pool.sync_replicas({"me": stats, "b": None})
    assert pool.members == {"me", "b"} and pool.subscriber is None
    pool.sync_replicas({"b": None})
    assert pool.members == {"b"}
