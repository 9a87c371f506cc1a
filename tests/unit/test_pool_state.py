"""A pool's routing state: in-flight requests count as holding their prefix until they end."""

from __future__ import annotations

from pdserve.routing.pool_state import PoolState
from pdserve.routing.types import RoutingStats


def test_in_flight_requests_make_their_prefix_visible_before_the_engine_reports_it() -> None:
    pool = PoolState("app/pool")
    pool.begin("r1", "req-a", 320, (1, 2, 3))
    pool.begin("r1", "req-b", 320, (1, 2, 9))
    assert pool.match([1, 2, 3, 4]) == {"r1": 3}
    assert pool.cached([1, 2, 3]) == {}  # nothing reported by the engine yet
    assert (pool.loads()["r1"], pool.in_flight_total()) == ((2, 640), 2)
    pool.end("r1", "req-a", (1, 2, 3))
    assert pool.match([1, 2, 3]) == {"r1": 2}  # req-b still holds blocks 1, 2
    pool.end("r1", "req-b", (1, 2, 9))
    assert pool.match([1, 2]) == {} and pool.in_flight_total() == 0


def test_engine_reported_blocks_and_in_flight_blocks_combine_per_replica() -> None:
    pool = PoolState("app/pool")
    with pool.lock:
        pool.index.store("r1", [1, 2])
    pool.begin("r2", "req", 96, (1, 2, 3))
    assert pool.match([1, 2, 3]) == {"r1": 2, "r2": 3}
    assert pool.best_hit([1, 2, 3]) == 3


def test_forgetting_a_replica_drops_its_blocks_work_and_sessions_load() -> None:
    pool = PoolState("app/pool")
    pool.begin("r1", "req", 10, (5,))
    with pool.lock:
        pool.index.store("r1", [5])
    pool.forget("r1")
    assert pool.match([5]) == {} and pool.in_flight_total() == 0


def test_sessions_are_remembered_with_a_bound() -> None:
    pool = PoolState("app/pool")
    for i in range(5):
        pool.remember_session(f"s{i}", f"r{i}", limit=3)
    assert pool.session_replica("s0") is None
    assert pool.session_replica("s4") == "r4"
    assert pool.session_replica(None) is None


def test_cache_fill_is_indexed_blocks_over_engine_capacity() -> None:
    pool = PoolState("app/pool")
    pool._capacity = {"r1": 10, "r2": 20}  # what replicas report through routing stats
    with pool.lock:
        pool.index.store("r1", [1, 2, 3, 4, 5])
        pool.index.store("r2", [1])
    assert pool.cache_fill() == {"r1": 0.5, "r2": 0.05}
    pool._fill_at = float("-inf")  # refreshed after FILL_REFRESH_S
    with pool.lock:
        pool.index.clear("r1")
    assert pool.cache_fill() == {"r1": 0.0, "r2": 0.05}


def test_a_replica_without_kv_events_that_left_is_forgotten_whole() -> None:
    pool = PoolState("app/pool", follow_kv_events=False)  # no replica gets an event stream
    report = {r: RoutingStats(replica=r, block_size=16, num_gpu_blocks=64, kv_cache_usage=0.5,
                              adapters=("a",)) for r in ("r1", "r2")}
    pool.sync_replicas(report)
    pool.remember_session("chat", "r2", limit=10)
    pool.begin("r2", "req", 10)
    assert pool.live_sessions() == {"r2": 1} and pool.adapter_holders("a") == {"r1", "r2"}
    pool.sync_replicas({"r1": report["r1"]})  # r2 scaled away
    assert pool.live_sessions() == {} and pool.adapter_holders("a") == {"r1"}
    assert set(pool.kv_usage_all()) == {"r1"} and "r2" not in pool.loads()
    assert pool.in_flight_total() == 0
    pool.end("r2", "req")  # its request's end, reported after it left, books nothing back
    assert pool.loads() == {} and pool.in_flight_total() == 0


def test_a_replica_known_only_by_its_work_and_sessions_is_forgotten_when_it_left() -> None:
    pool = PoolState("app/pool", follow_kv_events=False)
    pool.sync_replicas({"r1": None})
    pool.begin("r3", "late", 10)  # Ray reported a request routed to r3 after r3 left
    pool.remember_session("chat", "r3", limit=10)
    pool.sync_replicas({"r1": None, "r2": None})  # the next change of the replica set
    assert pool.in_flight_total() == 0 and pool.live_sessions() == {}


def test_replicas_count_whether_or_not_their_kv_events_are_followed() -> None:
    pool = PoolState("app/pool", follow_kv_events=False)
    assert pool.num_replicas() == 0 and not pool.synced
    pool.sync_replicas({"r1": None, "r2": RoutingStats(replica="r2", block_size=16)})
    assert pool.num_replicas() == 2 and pool.replica_ids() == ["r1", "r2"]
    pool.forget("r1")  # its actor died
    assert pool.num_replicas() == 1


def test_the_routers_block_bound_applies_to_a_pool_state_the_ingress_made_first() -> None:
    from pdserve.routing.pool_state import pool_state

    made_by_ingress = pool_state("test-app", "bound-pool")  # no bound: the default
    assert pool_state("test-app", "bound-pool", max_blocks_per_replica=2) is made_by_ingress
    with made_by_ingress.lock:
        made_by_ingress.index.store("r1", [1, 2, 3])
    # the oldest block went: a prompt starting with it matches nothing there any more
    assert made_by_ingress.cached([1, 2, 3]) == {} and made_by_ingress.cached([2, 3]) == {"r1": 2}
    made_by_ingress.begin("r1", "req", 48, (4, 5, 6))  # in-flight blocks are bounded alike
    assert made_by_ingress.match([4, 5, 6]) == {} and made_by_ingress.match([5, 6]) == {"r1": 2}
