"""The autoscaler's slow loop (planner floor) and its bound by physical room: the replica-side
load and capacity estimate, the floor, the decision's use of both, the Ray policy adapter (fake
contexts), and both in the simulated autoscaler."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from sim_profiles import PROFILE, model
from test_slo_signals import SLO, Clock, context

from pdserve.deployments.app import planner_profile
from pdserve.deployments.autoscaling import policy as policy_module
from pdserve.deployments.autoscaling.decision import (
    HOLD,
    UP,
    Decision,
    PoolSnapshot,
    Snapshot,
    decide,
    decide_pool,
)
from pdserve.deployments.autoscaling.floor import PlannerFloors
from pdserve.deployments.autoscaling.policy import SLOAutoscalingPolicy
from pdserve.deployments.autoscaling.report import ReplicaReport, ReplicaSignals, node_key
from pdserve.deployments.autoscaling.room import free_engine_slots
from pdserve.deployments.autoscaling.signals import ReplicaSLOSignals
from pdserve.deployments.config import AppConfig, SLOTargets
from pdserve.deployments.engine import capacity as capacity_module
from pdserve.deployments.engine.capacity import EngineCapacity
from pdserve.simulation import traces
from pdserve.simulation.estimates import Workload, engine_capacity, estimate, pool_candidate
from pdserve.simulation.graph import Simulation
from pdserve.simulation.profile_file import GraphOverhead

T = SLOTargets(ttft_ms=1000, itl_ms=100)
PROMPTS = (400,) * 20 + (1200,) * 5


# -- the replica: load offered and what one engine carries ---------------------------------
def test_a_replica_counts_the_load_offered_whether_or_not_it_computes_the_prompt() -> None:
    clock = Clock()
    signals = ReplicaSLOSignals(window_s=10, warmup_requests=0, clock=clock)
    clock.now = 2.0  # younger than the window: the rate is over half a window at least
    pulled = signals.start(500, computes_prompt=False)  # a decode replica pulling its KV
    local = signals.start(100)
    assert signals.queued_prefill_tokens == 100
    assert signals.arrival_rate() == pytest.approx(2 / 5)
    clock.now = 8.0
    assert signals.arrival_rate() == pytest.approx(2 / 8)
    assert signals.recent_prompts() == [500, 100]
    for request, tokens in ((pulled, 30), (local, 10)):
        request.on_output(tokens)
        request.finish()
        request.finish()  # once only
    assert signals.mean_output_tokens() == pytest.approx(20)
    clock.now = 20.0
    signals.start(7)
    assert signals.recent_prompts() == [7] and signals.arrival_rate() == pytest.approx(0.1)
    assert signals.mean_output_tokens() is None


@pytest.mark.parametrize("role", ["colocated", "prefill", "decode"])
def test_an_engines_capacity_is_the_rate_at_which_the_closed_form_meets_the_targets(role) -> None:
    local = 128 if role == "decode" else 0
    rps = engine_capacity(PROFILE, role, PROMPTS, 60, 256, 16, local, 1.0, 0.1)
    assert 0 < rps < math.inf

    def holds(rate: float) -> bool:
        workload = Workload(rate, sum(PROMPTS) / len(PROMPTS), 60, PROMPTS)
        return estimate(PROFILE, workload, pool_candidate(role), 256, 16,
                        local).feasible(1.0, 0.1, margin=1.0)

    assert holds(rps * 0.999) and not holds(rps * 1.01)
    looser = engine_capacity(PROFILE, role, PROMPTS, 60, 256, 16, local, 3.0, 0.3)
    assert looser >= rps
    assert engine_capacity(PROFILE, role, PROMPTS, 60, 256, 16, local, 1e-4, 1e-4) == 0


def test_a_replica_estimates_its_capacity_once_per_interval() -> None:
    clock = Clock()
    signals = ReplicaSLOSignals(window_s=30, clock=clock)
    capacity = EngineCapacity(PROFILE.model_dump(), "colocated", 256, 16, 0, interval_s=60,
                              clock=clock)
    assert capacity.rps(signals, T) is None  # nothing seen yet
    signals.start(400).finish()
    first = capacity.rps(signals, T)
    assert first is not None and first > 0
    clock.now = 59.0
    for _ in range(5):
        signals.start(1000).finish()
    assert capacity.rps(signals, T) == first
    clock.now = 61.0
    assert capacity.rps(signals, T) < first  # longer prompts: fewer per second
    looser = SLOTargets(ttft_ms=5000, itl_ms=500)
    assert capacity.due(looser) and capacity.rps(signals, looser) > capacity.value * 0.999
    assert capacity.slo == looser  # new targets: estimated again at once


def test_a_replica_estimates_off_its_loop_when_due_and_keeps_the_value_between() -> None:
    import asyncio

    clock = Clock()
    signals = ReplicaSLOSignals(window_s=30, clock=clock)
    capacity = EngineCapacity(PROFILE, "colocated", 256, 16, 0, interval_s=60, clock=clock)
    assert asyncio.run(capacity.current(signals, T)) is None  # nothing seen yet
    signals.start(400).finish()
    first = asyncio.run(capacity.current(signals, T))
    assert first is not None and first == capacity.rps(signals, T)
    signals.start(1000).finish()
    assert asyncio.run(capacity.current(signals, T)) == first  # not due within the interval


def test_an_estimate_never_fails_a_report(monkeypatch: pytest.MonkeyPatch) -> None:
    signals = ReplicaSLOSignals(window_s=30)
    signals.start(0).finish()  # a request whose prompt length was not known
    capacity = EngineCapacity(PROFILE, "colocated", 256, 16, 0, interval_s=60)
    assert capacity.inputs(signals, T) is None
    signals.start(400).finish()
    inputs = capacity.inputs(signals, T)
    assert inputs.prompts == (400,)
    assert capacity.compute(inputs) > 0

    def broken(*args, **kwargs) -> float:
        raise ZeroDivisionError("a profile the closed forms cannot use")

    monkeypatch.setattr(capacity_module, "engine_capacity", broken)
    assert capacity.compute(inputs) is None


def test_report_round_trip_of_load_capacity_and_placement() -> None:
    sent = ReplicaReport(ReplicaSignals(arrivals_per_s=2.5, capacity_rps=1.25,
                                        node=node_key("ab" * 28), engine_slots=2),
                         T, 4, planner_interval_s=30.0, oversubscribe_cores=True)
    got = ReplicaReport.decode(sent.encode())
    assert got == sent and got.signals.node == 0xABABABABABAB
    bare = ReplicaReport.decode(ReplicaReport().encode())
    assert bare.signals.capacity_rps is None and bare.planner_interval_s is None
    assert not bare.oversubscribe_cores


# -- the slow loop -------------------------------------------------------------------------
def pool(n: int = 1, replicas: tuple[ReplicaSignals, ...] = (), **kw) -> PoolSnapshot:
    return PoolSnapshot(**{"model": "a", "role": "colocated", "running": n, "target": n,
                           "min_replicas": 1, "max_replicas": 4, "replicas": replicas,
                           "requests": 1.0, **kw})


def test_the_floor_is_the_offered_rate_over_one_engines_capacity_held_for_an_interval() -> None:
    clock = Clock()
    floors = PlannerFloors(clock)
    busy = (ReplicaSignals(arrivals_per_s=2.0, capacity_rps=0.9),
            ReplicaSignals(arrivals_per_s=1.1, capacity_rps=1.1))
    assert floors.update(pool(2, busy), None) is None
    floor = floors.update(pool(2, busy), 60.0)
    assert floor is not None and floor.replicas == 4  # ceil(3.1 / 1.0)
    assert floors.apply(pool(2, busy)).floor == 4
    quiet = (ReplicaSignals(arrivals_per_s=0.2, capacity_rps=1.0),)
    clock.now = 30.0
    assert floors.update(pool(1, quiet), 60.0) is None  # within the interval: held
    assert floors.apply(pool(1, quiet)).floor == 4
    clock.now = 61.0
    assert floors.update(pool(1, quiet), 60.0).replicas == 1
    clock.now = 122.0  # due again, and no replica has an estimate: the floor lapses
    assert floors.update(pool(1, (ReplicaSignals(arrivals_per_s=5.0),)), 60.0) is None
    assert floors.apply(pool(1, quiet)).floor == 0
    floors.update(pool(1, quiet), 60.0)
    assert floors.apply(pool(1, quiet)).floor == 1
    floors.update(pool(1, quiet), None)  # the planner was turned off: no floor
    assert floors.apply(pool(1, quiet)).floor == 0


def brief(decision: Decision) -> tuple[int, str, str]:
    return decision.replicas, decision.direction, decision.reason


def test_the_decision_grows_to_the_floor_at_once_and_never_shrinks_below_it() -> None:
    idle = (ReplicaSignals(),)
    assert brief(decide_pool(pool(1, idle, floor=3), T)) == (3, UP, "planner_floor")
    assert decide_pool(pool(1, idle, floor=9), T).replicas == 4  # within max_replicas
    assert brief(decide_pool(pool(3, idle * 3, floor=3), T))[:2] == (3, HOLD)
    assert decide_pool(pool(3, idle * 3, floor=2), T).replicas == 2  # idle: shrink to it
    assert decide_pool(pool(2, idle * 2, floor=2, target=3), T).reason == "starting"
    assert brief(decide_pool(pool(1, idle, min_replicas=2), T)) == (2, UP, "min_replicas")


def test_a_floor_is_held_within_the_budget_and_the_ratio_trim_stops_at_it() -> None:
    idle = (ReplicaSignals(),)
    slow = (ReplicaSignals(ttft_ms=5000),)
    out = decide(Snapshot((pool(1, idle, model="a", floor=3), pool(1, slow, model="b")),
                          {"a": T, "b": T}, replica_budget=4))
    # a's floor restores first (2 of its 3 fit beside b's minimum), b's deficit gets nothing
    assert brief(out[("a", "colocated")]) == (3, UP, "planner_floor")
    assert out[("b", "colocated")].replicas == 1 and out[("b", "colocated")].reason == "budget"
    ratio = SLOTargets(ttft_ms=1000, itl_ms=100, max_prefill_decode_ratio=1)
    out = decide(Snapshot((pool(3, idle * 3, role="prefill", floor=3),
                           pool(2, idle * 2, role="decode", max_replicas=2)), {"a": ratio}))
    assert out[("a", "prefill")].replicas == 3  # not trimmed to 2 below its floor


# -- physical room -------------------------------------------------------------------------
def test_free_engine_slots_per_node() -> None:
    def on(node: int, slots: int | None = 2) -> ReplicaSignals:
        return ReplicaSignals(node=node, engine_slots=slots)

    assert free_engine_slots([on(1)], starting=0) == 1
    assert free_engine_slots([on(1)] * 3 + [on(2)], starting=0) == 1  # node 1 is past its cores
    assert free_engine_slots([on(1)], starting=1) == 0
    assert free_engine_slots([on(1)], starting=0, idle_nodes={1: 8, 3: 4}) == 5
    assert free_engine_slots([on(1), on(2, None)], starting=0) is None  # a GPU/unpinned engine
    assert free_engine_slots([], starting=0) is None
    # a running replica whose first report has not come, and fixed pools' engines, hold a core
    assert free_engine_slots([on(1), ReplicaSignals()], starting=0, idle_nodes={3: 4}) == 4
    assert free_engine_slots([on(1)], starting=0, idle_nodes={3: 4}, fixed=2) == 3


SLOW = ReplicaSignals(ttft_ms=3000, itl_ms=50)


def snapshot(free: int | None, oversubscribe: bool = False) -> Snapshot:
    return Snapshot((pool(1, (SLOW,), model="a"),
                     pool(1, (ReplicaSignals(ttft_ms=1500),), model="b")),
                    {"a": T, "b": T}, None, free, oversubscribe)


def test_growth_beyond_the_nodes_physical_room_is_skipped_and_reported() -> None:
    out = decide(snapshot(free=None))
    assert out[("a", "colocated")].replicas == 2 and out[("b", "colocated")].replicas == 2
    out = decide(snapshot(free=1))  # the larger deficit (a: 3.0 vs b: 1.5) gets the slot
    assert brief(out[("a", "colocated")])[:2] == (2, UP)
    assert brief(out[("b", "colocated")]) == (1, HOLD, "no_physical_capacity")
    assert out[("b", "colocated")].beyond_physical == 1
    out = decide(snapshot(free=0, oversubscribe=True))
    assert [(d.replicas, d.beyond_physical) for d in out.values()] == [(2, 1), (2, 1)]
    # requests wait for a first replica of c: restoring growth comes first
    waiting = pool(0, (), model="c", min_replicas=0, requests=3.0)
    out = decide(Snapshot((*snapshot(free=1).pools, waiting), {"a": T, "b": T, "c": T}, None, 1))
    assert brief(out[("c", "colocated")]) == (1, UP, "scale_from_zero")
    assert out[("a", "colocated")].reason == "no_physical_capacity"


# -- the Ray policy adapter ----------------------------------------------------------------
def test_the_app_policy_runs_the_slow_loop_and_bounds_growth_by_the_nodes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    policy = SLOAutoscalingPolicy()
    policy.metrics = None
    monkeypatch.setattr(policy, "_alive_nodes", lambda: {7: 2})
    placed = {"warm": 1.0, "node": 7.0, "node_engine_slots": 2.0, **SLO}
    planned = {**placed, "planner_interval_s": 60.0, "capacity_rps": 0.5, "ttft_ms": 100.0}
    contexts = {
        "id-a": context("a-colocated", {"c1": {**planned, "arrivals_per_s": 1.6}},
                        capacity_adjusted_max_replicas=4),
        "id-b": context("b-colocated", {"b1": {**placed, "ttft_ms": 100.0}}),
    }
    targets, state = policy(contexts)
    # floor ceil(1.6 / 0.5) = 4, but node 7 holds 2 engines: 2 run, no room left
    assert targets == {"id-a": 1, "id-b": 1}
    assert state["id-a"] == {"pdserve_reason": "no_physical_capacity"}
    assert policy.floors.floors[("a", "colocated")].replicas == 4
    monkeypatch.setattr(policy, "_alive_nodes", lambda: {7: 2, 8: 16})  # a node joined
    targets, state = policy(contexts)
    assert targets["id-a"] == 4 and state["id-a"] == {"pdserve_reason": "planner_floor"}
    oversubscribed = {k: {**v, "oversubscribe_cores": 1.0} for k, v in
                      {"c1": {**planned, "arrivals_per_s": 1.6}}.items()}
    monkeypatch.setattr(policy, "_alive_nodes", lambda: {7: 2})
    contexts["id-a"] = context("a-colocated", oversubscribed, capacity_adjusted_max_replicas=4)
    assert policy(contexts)[0]["id-a"] == 4


def test_a_pool_policy_never_asks_ray_for_the_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    state = SLOAutoscalingPolicy()
    state.metrics = None

    def no_call() -> None:
        raise AssertionError("pool_policy bounds nothing by room")

    monkeypatch.setattr(state, "_alive_nodes", no_call)
    monkeypatch.setattr(policy_module, "_pool_policy_state", state)
    placed = {"warm": 1.0, "node": 7.0, "node_engine_slots": 1.0, "ttft_ms": 900.0, **SLO}
    assert policy_module.pool_policy(context("a-colocated", {"c1": placed}))[0] == 2


def test_a_report_that_does_not_decode_is_skipped_not_raised() -> None:
    policy = SLOAutoscalingPolicy()
    policy.metrics = None
    bad = {"warm": 1.0, "node": float("inf"), **SLO}
    targets, _ = policy({"id-a": context("a-colocated", {"c1": bad})})
    assert targets == {"id-a": 1}


# -- configuration -------------------------------------------------------------------------
def app(planner: dict | None, slo: bool = True) -> dict:
    pools = {"colocated": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}}}
    return {"models": [{"model_id": "m", "model": "pdserve://tiny", "mode": "colocated",
                        **({"slo": {}} if slo else {}),
                        **({"planner": planner} if planner else {}), **pools}]}


def test_a_planner_needs_slo_targets_and_a_readable_profile(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="planner: needs `slo`"):
        AppConfig.model_validate(app({"profile": "p.json"}, slo=False))
    for bad in ("missing.json", "garbage.json"):
        (tmp_path / "garbage.json").write_text("{}")
        config = AppConfig.model_validate(app({"profile": str(tmp_path / bad)}))
        with pytest.raises(ValueError, match=r"models\[0\]\.planner\.profile: "):
            planner_profile(config, 0)
    PROFILE.save(tmp_path / "p.json")
    config = AppConfig.model_validate(app({"profile": str(tmp_path / "p.json")}))
    assert planner_profile(config, 0)["step_times"]["base"] == PROFILE.step_times.base
    assert planner_profile(AppConfig.model_validate(app(None)), 0) is None


# -- in the simulated autoscaler -----------------------------------------------------------
SCALING = {"min_replicas": 1, "max_replicas": 4, "metrics_interval_s": 2,
           "look_back_period_s": 10, "upscale_delay_s": 5, "downscale_delay_s": 20}
#: 60 s at 20 requests/s of 800-token prompts: one engine carries ~8/s within 1.5 s TTFT.
STEADY = traces.poisson(20.0, 1200, traces.fixed_lengths(800, 20), seed=4)


def simulated(tmp_path: Path, planner: bool, cores: int | None = None,
              oversubscribe: bool = False) -> Simulation:
    PROFILE.save(tmp_path / "profile.json")
    extra = {"planner": {"profile": str(tmp_path / "profile.json"), "interval_s": 30}}
    config = model("colocated", colocated={"autoscaling_config": SCALING},
                   slo={"ttft_ms": 1500, "itl_ms": 200, "max_queued_prefill_tokens": 10**6},
                   **(extra if planner else {}))
    profile = PROFILE.model_copy(update={"graph_overhead": GraphOverhead(host_cores=cores)})
    return Simulation(profile, config, STEADY, autoscaling="slo_app", startup_s=5,
                      oversubscribe_cores=oversubscribe)


def test_the_simulated_slow_loop_sets_the_floor_from_the_load_it_saw(tmp_path: Path) -> None:
    """20 requests/s of 800-token prompts, one engine carrying ~8.1/s within the targets: the
    floor is 3, and once set no decision goes below it (the fast loop adds above it)."""
    sim = simulated(tmp_path, planner=True)
    sim.run()
    scaler = sim.autoscaler
    capacity = next(iter(scaler.capacities.values())).value
    assert capacity == pytest.approx(8.1, rel=0.05)  # the closed form (800-token prompts)
    floor = scaler.floors.floors[("tiny", "colocated")]
    assert floor.replicas == 3 and 16 < floor.arrivals_per_s < 24
    assert floor.capacity_rps == pytest.approx(capacity, rel=0.01)
    assert all(a.replicas_to >= 3 for a in scaler.actions if a.time_s >= floor.at)
    without = simulated(tmp_path, planner=False)
    without.run()
    assert not without.autoscaler.floors.floors and not without.autoscaler.capacities


def test_the_simulated_policy_adds_no_engine_to_a_host_without_a_free_core(
        tmp_path: Path) -> None:
    bounded = simulated(tmp_path, planner=True, cores=2)
    bounded.run()
    assert max(a.replicas_to for a in bounded.autoscaler.actions) == 2
    oversubscribed = simulated(tmp_path, planner=True, cores=2, oversubscribe=True)
    oversubscribed.run()
    assert max(a.replicas_to for a in oversubscribed.autoscaler.actions) > 2
