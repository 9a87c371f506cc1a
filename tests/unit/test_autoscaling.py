"""The SLO autoscaling decision, table-driven over snapshots (pure logic, no Ray)."""

from __future__ import annotations

import pytest

from pdserve.deployments.autoscaling.decision import (
    DOWN,
    HOLD,
    UP,
    PoolSnapshot,
    Snapshot,
    decide,
    decide_pool,
)
from pdserve.deployments.autoscaling.report import ReplicaSignals
from pdserve.deployments.config.slo import SLOTargets

T = SLOTargets(ttft_ms=1000, itl_ms=100, max_queued_prefill_tokens=1000, max_kv_cache_usage=0.8,
            scale_down_below=0.6)
CALM = ReplicaSignals(ttft_ms=500, itl_ms=50, kv_cache_usage=0.3, queued_prefill_tokens=100,
                      running=2)
IDLE = ReplicaSignals()


def pool(role: str, n: int, signals: ReplicaSignals = CALM, *, model: str = "a",
         target: int | None = None, lo: int = 1, hi: int = 4, requests: float = 1.0,
         replicas: tuple[ReplicaSignals, ...] | None = None) -> PoolSnapshot:
    return PoolSnapshot(model=model, role=role, running=n, target=n if target is None else target,
                        min_replicas=lo, max_replicas=hi,
                        replicas=replicas if replicas is not None else (signals,) * n,
                        requests=requests)


def pd(prefill: PoolSnapshot, decode: PoolSnapshot, targets: SLOTargets = T,
       budget: int | None = None, *extra: PoolSnapshot) -> dict:
    return decide(Snapshot(pools=(prefill, decode, *extra),
                           targets={prefill.model: targets, **{p.model: targets for p in extra}},
                           replica_budget=budget))


SLOW_TTFT = ReplicaSignals(ttft_ms=2500, itl_ms=50, kv_cache_usage=0.3, running=4)
DEEP_QUEUE = ReplicaSignals(ttft_ms=600, queued_prefill_tokens=1500, running=4)
SLOW_ITL = ReplicaSignals(ttft_ms=500, itl_ms=180, kv_cache_usage=0.3, running=8)
FULL_KV = ReplicaSignals(itl_ms=60, kv_cache_usage=0.95, running=8)


@pytest.mark.parametrize(
    ("name", "prefill", "decode", "want_prefill", "want_decode"),
    [
        ("burst on prefill only (TTFT)", pool("prefill", 1, SLOW_TTFT), pool("decode", 1),
         (2, UP, "ttft"), (1, HOLD, "steady")),
        ("burst on prefill only (queued tokens)", pool("prefill", 1, DEEP_QUEUE),
         pool("decode", 1), (2, UP, "queued_prefill_tokens"), (1, HOLD, "steady")),
        ("burst on decode only (ITL)", pool("prefill", 1), pool("decode", 1, SLOW_ITL),
         (1, HOLD, "steady"), (2, UP, "itl")),
        ("burst on decode only (KV usage)", pool("prefill", 1), pool("decode", 1, FULL_KV),
         (1, HOLD, "steady"), (2, UP, "kv_cache_usage")),
        ("both", pool("prefill", 1, SLOW_TTFT), pool("decode", 1, SLOW_ITL),
         (2, UP, "ttft"), (2, UP, "itl")),
        ("big deficit grows proportionally, at most doubling",
         pool("prefill", 2, ReplicaSignals(ttft_ms=5000)), pool("decode", 1),
         (4, UP, "ttft"), (1, HOLD, "steady")),
        ("growth stops at max_replicas", pool("prefill", 2, SLOW_TTFT, hi=2), pool("decode", 1),
         (2, HOLD, "max_replicas"), (1, HOLD, "steady")),
        ("steady load: no change", pool("prefill", 2), pool("decode", 2),
         (2, HOLD, "steady"), (2, HOLD, "steady")),
        ("pending replicas: no stacked decision",
         pool("prefill", 1, SLOW_TTFT, target=2), pool("decode", 1),
         (2, HOLD, "starting"), (1, HOLD, "steady")),
        ("replica being removed: hold", pool("prefill", 2, IDLE, target=1), pool("decode", 1),
         (1, HOLD, "stopping"), (1, HOLD, "steady")),
        ("cold-start samples are ignored",
         pool("prefill", 1, replicas=(ReplicaSignals(warm=False, ttft_ms=9000),)),
         pool("decode", 1), (1, HOLD, "warming"), (1, HOLD, "steady")),
        ("a warming replica's samples do not count next to a warm one",
         pool("prefill", 2, replicas=(CALM, ReplicaSignals(warm=False, ttft_ms=9000))),
         pool("decode", 1), (2, HOLD, "steady"), (1, HOLD, "steady")),
        ("load gone: shrink by one", pool("prefill", 3, IDLE), pool("decode", 2, IDLE),
         (2, DOWN, "headroom"), (1, DOWN, "headroom")),
        ("would miss targets with one fewer: keep", pool("prefill", 2,
         ReplicaSignals(ttft_ms=400)), pool("decode", 1), (2, HOLD, "steady"),
         (1, HOLD, "steady")),
        ("never below min_replicas", pool("prefill", 2, IDLE, lo=2), pool("decode", 1, IDLE),
         (2, HOLD, "steady"), (1, HOLD, "steady")),
    ],
)
def test_pool_rules(name: str, prefill: PoolSnapshot, decode: PoolSnapshot,
                    want_prefill: tuple, want_decode: tuple) -> None:
    out = pd(prefill, decode)
    got = {role: (d.replicas, d.direction, d.reason) for (_, role), d in out.items()}
    assert got == {"prefill": want_prefill, "decode": want_decode}, name


def test_hysteresis_band_holds_between_thresholds() -> None:
    """Pressure between scale_down_below*(n-1)/n and 1.0: no move in either direction, so a
    steady load at 70 % of target does not flap."""
    for ttft in (450.0, 700.0, 999.0):
        d = decide_pool(pool("prefill", 2, ReplicaSignals(ttft_ms=ttft)), T)
        assert (d.replicas, d.direction) == (2, HOLD), ttft
    assert decide_pool(pool("prefill", 2, ReplicaSignals(ttft_ms=250.0)), T).direction == DOWN
    assert decide_pool(pool("prefill", 2, ReplicaSignals(ttft_ms=1001.0)), T).direction == UP


def test_colocated_pool_answers_for_both_latencies() -> None:
    slow_itl = decide_pool(pool("colocated", 1, SLOW_ITL), T)
    slow_ttft = decide_pool(pool("colocated", 1, SLOW_TTFT), T)
    assert (slow_itl.direction, slow_itl.reason) == (UP, "itl")
    assert (slow_ttft.direction, slow_ttft.reason) == (UP, "ttft")


def test_scale_to_zero_and_back() -> None:
    idle = pool("colocated", 1, IDLE, lo=0, requests=0)
    assert (decide_pool(idle, T).replicas, decide_pool(idle, T).reason) == (0, "idle")
    busy = pool("colocated", 1, ReplicaSignals(running=1), lo=0, requests=1)
    assert decide_pool(busy, T).replicas == 1
    waiting = pool("colocated", 0, lo=0, requests=3)
    assert (decide_pool(waiting, T).replicas, decide_pool(waiting, T).reason) == (
        1, "scale_from_zero")
    assert decide_pool(pool("colocated", 0, lo=0, requests=0), T).replicas == 0


def test_budget_contention_between_two_models() -> None:
    """Budget 5, minimums 1 each (4 pools): one replica left; the larger deficit gets it."""
    a_p = pool("prefill", 1, ReplicaSignals(ttft_ms=3000), model="a")
    a_d = pool("decode", 1, model="a")
    b_p = pool("prefill", 1, ReplicaSignals(ttft_ms=1500), model="b")
    b_d = pool("decode", 1, model="b")
    out = pd(a_p, a_d, T, 5, b_p, b_d)
    assert out[("a", "prefill")].replicas == 2 and out[("a", "prefill")].direction == UP
    assert (out[("b", "prefill")].replicas, out[("b", "prefill")].reason) == (1, "budget")
    assert sum(d.replicas for d in out.values()) == 5
    roomy = pd(a_p, a_d, T, 6, b_p, b_d)
    assert roomy[("b", "prefill")].replicas == 2


def test_budget_takes_back_from_the_smallest_deficit() -> None:
    """A pool above its minimum with low pressure yields to a pool missing its target."""
    a_p = pool("prefill", 1, ReplicaSignals(ttft_ms=3000), model="a")
    a_d = pool("decode", 1, model="a")
    b_c = pool("colocated", 2, ReplicaSignals(ttft_ms=500, itl_ms=70), model="b")
    out = pd(a_p, a_d, T, 4, b_c)
    assert out[("a", "prefill")].replicas == 2
    assert (out[("b", "colocated")].replicas, out[("b", "colocated")].reason) == (1, "budget")


@pytest.mark.parametrize(
    ("name", "bounds", "prefill", "decode", "want"),
    [
        ("prefill grows past max ratio: decode follows", (None, 1.0),
         pool("prefill", 1, SLOW_TTFT), pool("decode", 1), (2, 2)),
        ("decode at its max: prefill is trimmed", (None, 1.0),
         pool("prefill", 1, SLOW_TTFT), pool("decode", 1, hi=1), (1, 1)),
        ("decode grows below min ratio: prefill follows", (1.0, None),
         pool("prefill", 1), pool("decode", 1, SLOW_ITL), (2, 2)),
        ("within bounds: untouched", (0.5, 2.0), pool("prefill", 1, SLOW_TTFT),
         pool("decode", 1), (2, 1)),
    ],
)
def test_ratio_bounds(name: str, bounds: tuple, prefill: PoolSnapshot, decode: PoolSnapshot,
                      want: tuple[int, int]) -> None:
    targets = T.model_copy(update={"min_prefill_decode_ratio": bounds[0],
                                   "max_prefill_decode_ratio": bounds[1]})
    out = pd(prefill, decode, targets)
    assert (out[("a", "prefill")].replicas, out[("a", "decode")].replicas) == want, name


def test_other_model_untouched_by_a_burst() -> None:
    a_p = pool("prefill", 1, SLOW_TTFT, model="a")
    a_d = pool("decode", 1, model="a")
    b_c = pool("colocated", 1, model="b")
    out = pd(a_p, a_d, T, None, b_c)
    assert out[("a", "prefill")].direction == UP
    assert (out[("b", "colocated")].replicas, out[("b", "colocated")].direction) == (1, HOLD)
