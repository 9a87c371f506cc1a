"""Router scoring: each scorer, the weighted ranking, tie-breaking and the pow-2 fallback."""

from __future__ import annotations

import random

import pytest

from pdserve.routing.scorers import (
    PREFIX_AWARE_WEIGHTS,
    ReplicaView,
    RequestView,
    RouterSettings,
    choose,
    is_imbalanced,
    rank,
    total_scores,
)

SETTINGS = RouterSettings()
REQUEST = RequestView(num_blocks=10)


@pytest.mark.parametrize(
    ("scorer", "request_view", "replica", "expected"),
    [
        ("prefix", REQUEST, ReplicaView("a", hit_blocks=5), 0.5),
        ("prefix", RequestView(0), ReplicaView("a"), 0.0),
        ("prefix", RequestView(10, use_prefix=False), ReplicaView("a", hit_blocks=10),
         0.0),
        ("queue", REQUEST, ReplicaView("a", queue=2), 1 - 2 / 8),
        ("tokens", REQUEST, ReplicaView("a", pending_tokens=1024), 1 - 1024 / 4096),
        ("kv_headroom", REQUEST, ReplicaView("a", kv_usage=0.25), 0.75),
        ("cache_headroom", REQUEST, ReplicaView("a", cache_fill=0.6), 0.4),
        ("session", RequestView(1, session_replica="a"), ReplicaView("a"), 1.0),
        ("session", RequestView(1, session_replica="b"), ReplicaView("a"), 0.0),
        ("adapter", RequestView(1, adapter=True), ReplicaView("a", holds_adapter=True), 1.0),
        ("adapter", RequestView(1, adapter=True), ReplicaView("a"), 0.0),
        ("adapter", RequestView(1), ReplicaView("a", holds_adapter=True), 0.0),
    ],
)
def test_each_scorer(
    scorer: str, request_view: RequestView, replica: ReplicaView, expected: float
) -> None:
    alone = RouterSettings(weights={scorer: 1.0})
    assert total_scores(request_view, [replica], alone) == [pytest.approx(expected)]
    doubled = RouterSettings(weights={scorer: 2.0})
    assert total_scores(request_view, [replica], doubled) == [pytest.approx(2 * expected)]


def test_choose_picks_what_rank_puts_first() -> None:
    replicas = [ReplicaView(f"r{i}", hit_blocks=i % 4, queue=i % 3, pending_tokens=7 * i)
                for i in range(16)]
    for seed in range(10):
        best, rest = choose(REQUEST, replicas, SETTINGS, random.Random(seed))
        assert best == rank(REQUEST, replicas, SETTINGS, random.Random(seed))[0]
        assert sorted(rest + [best]) == sorted(replicas)


def test_cached_prefix_beats_a_modestly_busier_replica() -> None:
    holder = ReplicaView("holder", hit_blocks=10, queue=1, pending_tokens=300)
    idle = ReplicaView("idle")
    assert [r.replica for r in rank(REQUEST, [idle, holder], SETTINGS, random.Random(0))] == [
        "holder", "idle"]


def test_an_adapters_request_goes_where_its_adapter_is_loaded_unless_that_one_is_busier(
) -> None:
    lora = RequestView(num_blocks=10, adapter=True)
    holder = ReplicaView("holder", holds_adapter=True)
    other = ReplicaView("other")
    assert rank(lora, [other, holder], SETTINGS, random.Random(0))[0].replica == "holder"
    busy_holder = ReplicaView("holder", queue=6, pending_tokens=3000, holds_adapter=True)
    assert rank(lora, [other, busy_holder], SETTINGS, random.Random(0))[0].replica == "other"


def test_without_cached_prefix_the_less_loaded_replica_wins() -> None:
    busy = ReplicaView("busy", queue=2, pending_tokens=600)
    idle = ReplicaView("idle")
    assert rank(REQUEST, [busy, idle], SETTINGS, random.Random(0))[0].replica == "idle"


def test_equal_scores_break_on_queue_then_tokens_then_chance() -> None:
    only_prefix = RouterSettings(weights={"prefix": 1.0})
    a = ReplicaView("a", queue=1)
    b = ReplicaView("b", queue=0, pending_tokens=100)
    c = ReplicaView("c", queue=0, pending_tokens=0)
    assert [r.replica for r in rank(REQUEST, [a, b, c], only_prefix, random.Random(0))] == [
        "c", "b", "a"]
    winners = {rank(REQUEST, [ReplicaView("x"), ReplicaView("y")], only_prefix,
                    random.Random(seed))[0].replica for seed in range(20)}
    assert winners == {"x", "y"}  # identical replicas share the load


def test_imbalanced_pool_falls_back_to_power_of_two_on_queue() -> None:
    settings = RouterSettings(imbalance_threshold=2)
    hot = ReplicaView("hot", hit_blocks=10, queue=5)  # best prefix, but swamped
    cold = ReplicaView("cold", queue=0)
    assert is_imbalanced([hot, cold], 2)
    assert rank(REQUEST, [hot, cold], settings, random.Random(0))[0].replica == "cold"


def test_weights_name_known_scorers_only() -> None:
    with pytest.raises(ValueError, match="unknown scorer.*'prefx'.*known"):
        RouterSettings(weights={"prefx": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        RouterSettings(weights={"queue": -1.0})
    with pytest.raises(ValueError, match="extra"):
        RouterSettings.model_validate({"wieghts": {}})


def test_a_new_prefix_goes_where_caching_it_evicts_least() -> None:
    settings = RouterSettings(weights={**SETTINGS.weights, "cache_headroom": 0.5})
    full = ReplicaView("full", cache_fill=0.9)
    empty = ReplicaView("empty", cache_fill=0.1)
    assert rank(REQUEST, [full, empty], settings, random.Random(0))[0].replica == "empty"
    holder = ReplicaView("full", hit_blocks=10, cache_fill=0.9)  # ...unless it is cached there
    assert rank(REQUEST, [holder, empty], settings, random.Random(0))[0].replica == "full"


def test_scores_are_clamped_to_unit_range() -> None:
    overloaded = ReplicaView("a", hit_blocks=50, queue=100, pending_tokens=10**6, kv_usage=1.5)
    settings = RouterSettings(weights={"queue": 1.0, "tokens": 1.0, "kv_headroom": 1.0})
    assert total_scores(REQUEST, [overloaded], settings) == [0.0]
    assert total_scores(REQUEST, [overloaded], RouterSettings(weights={"prefix": 3.0})) == [3.0]


#: the default weights with the opt-in `session_spread`
SPREAD = RouterSettings(weights={**PREFIX_AWARE_WEIGHTS, "session_spread": 1.0})


def test_a_new_session_goes_where_fewest_sessions_live() -> None:
    crowded = ReplicaView("crowded", live_sessions=4)
    quiet = ReplicaView("quiet", queue=1, pending_tokens=200, live_sessions=2)
    new = RequestView(num_blocks=10, new_session=True)
    assert total_scores(new, [crowded, quiet], SPREAD) == [
        pytest.approx(1 + 1 + 0.5), pytest.approx(1 - 1 / 8 + 1 - 200 / 4096 + 0.5 + 0.5)]
    assert choose(new, [crowded, quiet], SPREAD, random.Random(0))[0] is quiet
    # Weight 0, or not a new session: the counts change nothing.
    off = SETTINGS  # the default: opt-in
    known = RequestView(num_blocks=10)
    assert total_scores(new, [crowded, quiet], off) == total_scores(known, [crowded, quiet],
                                                                    SPREAD)
    assert choose(known, [crowded, quiet], SPREAD, random.Random(0))[0] is crowded


def test_the_spread_yields_to_a_prefix_or_adapter_held_unevenly() -> None:
    new = RequestView(num_blocks=10, new_session=True)
    crowded = ReplicaView("crowded", live_sessions=4)
    quiet = ReplicaView("quiet", live_sessions=0)
    # A shared system prompt held by both: the spread counts in full.
    shared = [crowded._replace(hit_blocks=3), quiet._replace(hit_blocks=3)]
    on_crowded, on_quiet = total_scores(new, shared, SPREAD)
    assert on_quiet - on_crowded == pytest.approx(1.0)
    # Held unevenly, even by little (a conversation this ingress does not know, after a
    # shared system prompt): the count gives way to the prefix.
    uneven = [crowded._replace(hit_blocks=9), quiet._replace(hit_blocks=7)]
    on_crowded, on_quiet = total_scores(new, uneven, SPREAD)
    assert on_crowded - on_quiet == pytest.approx(2.0 * 2 / 10)
    assert choose(new, uneven, SPREAD, random.Random(0))[0].replica == "crowded"
    # An adapter loaded on one only: the count gives way.
    lora = RequestView(num_blocks=10, new_session=True, adapter=True)
    holder = crowded._replace(holds_adapter=True)
    assert total_scores(lora, [holder, quiet], SPREAD) == [
        pytest.approx(1 + 1 + 0.5 + 1), pytest.approx(1 + 1 + 0.5)]
