"""Which requests the router treats as a session's first turn, on its real decision code
(`PrefixAwareRouter.choose` over a `PoolState`; no Ray, as `benchmarks/route_micro.py`)."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from pdserve.routing import pool_state as pool_state_module
from pdserve.routing.pool_state import PoolState
from pdserve.routing.router import PrefixAwareRouter
from pdserve.routing.scorers import PREFIX_AWARE_WEIGHTS, RouterSettings
from pdserve.routing.types import RoutingInfo


def router_over(replicas: list[str], **settings: Any) -> Any:
    """The router with `session_spread` on (opt-in), over a pool of `replicas`."""
    router = PrefixAwareRouter.__new__(PrefixAwareRouter)
    router.settings = RouterSettings(
        **{"weights": {**PREFIX_AWARE_WEIGHTS, "session_spread": 1.0}, **settings})
    router.pool = PoolState("app/pool", follow_kv_events=False)
    router.pool.session_live_s = router.settings.session_live_s
    router.rng = random.Random(0)
    router.candidates = [SimpleNamespace(replica_id=SimpleNamespace(unique_id=r))
                         for r in replicas]
    return router


def chosen(router: Any, session: str | None, among: list[str] | None = None) -> str:
    candidates = [c for c in router.candidates
                  if among is None or c.replica_id.unique_id in among]
    best, _, _ = router.choose(candidates, RoutingInfo(prompt_tokens=64, session_id=session))
    return best.replica_id.unique_id


def test_a_first_turn_goes_where_fewest_sessions_live_and_later_turns_stay() -> None:
    router = router_over(["r1", "r2"])
    for session in ("a", "b"):
        router.pool.remember_session(session, "r1", limit=100)
    assert router.pool.live_sessions() == {"r1": 2}
    for seed in range(8):  # at rest only the counts tell the replicas apart
        router.rng = random.Random(seed)
        assert chosen(router, f"new-{seed}") == "r2"
        assert chosen(router, "a") == "r1"  # known: affinity, the counts do not apply


def test_a_session_whose_replica_is_not_a_candidate_starts_afresh() -> None:
    router = router_over(["r1", "r2", "r3"])
    router.pool.remember_session("a", "r1", limit=100)
    router.pool.remember_session("b", "r3", limit=100)
    router.pool.remember_session("c", "r3", limit=100)
    for seed in range(8):
        router.rng = random.Random(seed)
        assert chosen(router, "a", among=["r2", "r3"]) == "r2"


def test_without_a_session_id_or_the_weight_the_counts_are_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = router_over(["r1", "r2"])
    monkeypatch.setattr(router.pool, "live_sessions", lambda: pytest.fail("counts read"))
    chosen(router, None)
    router.settings = RouterSettings()  # the default: `session_spread` is opt-in
    chosen(router, "new")


def test_sessions_stop_counting_after_session_live_s(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(pool_state_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    router = router_over(["r1", "r2"], session_live_s=30)
    router.pool.remember_session("a", "r1", limit=100)
    clock[0] = 129.0
    assert router.pool.live_sessions() == {"r1": 1}
    clock[0] = 131.0
    assert router.pool.live_sessions() == {}
    assert router.pool.session_replica("a") == "r1"  # affinity outlives liveness
