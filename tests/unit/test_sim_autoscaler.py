"""The simulated autoscaler: Ray's delays, bounds and cold start around the project's SLO
policy and Ray's default; replica start-up and draining; a host without a free core. The Ray
internals it calls are pinned here."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from ray.serve._private.constants import CONTROL_LOOP_INTERVAL_S
from ray.serve.autoscaling_policy import _apply_delay_logic, _apply_scaling_factors
from ray.serve.config import AutoscalingConfig
from sim_profiles import PROFILE, model

from pdserve.simulation import traces
from pdserve.simulation.graph import Simulation
from pdserve.simulation.metrics import summarize
from pdserve.simulation.profile_file import GraphOverhead
from pdserve.simulation.serve_config import autoscaling_policy, load_app, pick_model

SCALING = {"min_replicas": 1, "max_replicas": 3, "metrics_interval_s": 2,
           "look_back_period_s": 10, "upscale_delay_s": 5, "downscale_delay_s": 20,
           "target_ongoing_requests": 2}
LENGTHS = traces.fixed_lengths(400, 40)
#: 30 s at 1 request/s, then 30 s at 20/s: one replica cannot keep up with the second part.
RAMP = traces.poisson(1.0, 30, LENGTHS, seed=1) + [
    traces.TraceRequest(30 + r.arrival_s, 400, 40)
    for r in traces.poisson(20.0, 600, LENGTHS, seed=2)]
ROOT = Path(__file__).resolve().parents[2]


def test_the_ray_internals_the_simulator_calls_behave_as_it_assumes() -> None:
    """Private in Ray (`_apply_scaling_factors`, `_apply_delay_logic` with its `_now`
    parameter, the control-loop period): an upgrade that changes them fails here."""
    assert CONTROL_LOOP_INTERVAL_S > 0
    assert "_now" in inspect.signature(_apply_delay_logic).parameters
    config = AutoscalingConfig(min_replicas=1, max_replicas=8, upscale_delay_s=5,
                               downscale_delay_s=20, upscaling_factor=0.5)
    assert _apply_scaling_factors(5, 2, config) == 4  # 2 + 0.5 × (5 - 2), rounded up
    state: dict = {}
    assert _apply_delay_logic(3, 1, config, state, _now=100.0)[0] == 1  # wanted since now
    assert _apply_delay_logic(3, 1, config, state, _now=104.0)[0] == 1
    assert _apply_delay_logic(3, 1, config, state, _now=105.0)[0] == 3  # held for 5 s
    assert _apply_delay_logic(1, 3, config, state, _now=106.0)[0] == 3
    assert _apply_delay_logic(1, 3, config, state, _now=126.0)[0] == 1


def colocated(policy: str, **extra) -> Simulation:
    slo = {"slo": {"ttft_ms": 500, "itl_ms": 100}} if policy.startswith("slo") else {}
    config = model("colocated", colocated={"autoscaling_config": {**SCALING, **extra}}, **slo)
    return Simulation(PROFILE, config, RAMP, autoscaling=policy, startup_s=8)


@pytest.mark.parametrize("policy", ["ray_default", "slo"])
def test_a_pool_grows_after_rays_delay_and_new_replicas_serve_after_start_up(policy) -> None:
    sim = colocated(policy)
    outcomes = sim.run()
    assert all(o.done for o in outcomes)
    ups = [a for a in sim.autoscaler.actions if a.replicas_to > a.replicas_from]
    assert ups, sim.autoscaler.actions
    assert ups[0].time_s >= 30 + SCALING["upscale_delay_s"]  # the load rises at 30 s
    assert max(a.replicas_to for a in sim.autoscaler.actions) <= SCALING["max_replicas"]
    history = sim.pools["colocated"].history
    assert len(history) > 1
    for replica in history[1:]:
        assert replica.ready_s == pytest.approx(replica.started_s + 8)
        served = [o for o in outcomes if o.replica == replica.name]
        assert served and min(o.token_s[0] for o in served) > replica.ready_s
    end = max(o.token_s[-1] for o in outcomes)
    lifetimes = sum(end - r.started_s for r in history)  # none stopped before the end here
    assert sim.replica_seconds() == pytest.approx(lifetimes)


def test_autoscaling_beats_a_fixed_replica_on_the_same_trace() -> None:
    scaled = summarize(colocated("ray_default").run())
    fixed = summarize(Simulation(PROFILE, model("colocated", colocated={
        "autoscaling_config": SCALING}), RAMP, autoscaling=None).run())
    assert scaled["p90_ttft_ms"] < fixed["p90_ttft_ms"] / 1.5


def test_an_idle_pool_shrinks_after_the_downscale_delay_and_its_replica_drains() -> None:
    trace = RAMP + [traces.TraceRequest(70 + 5 * i, 400, 40) for i in range(20)]
    sim = Simulation(PROFILE, model("colocated", colocated={"autoscaling_config": SCALING}),
                     trace, autoscaling="ray_default", startup_s=8)
    outcomes = sim.run()
    downs = [a for a in sim.autoscaler.actions if a.replicas_to < a.replicas_from]
    assert downs and all(o.done for o in outcomes)
    stopped = [r for r in sim.pools["colocated"].history if r.stopped_s is not None]
    assert stopped
    for replica in stopped:  # nothing sent to it after it began draining, all of it finished
        served = [o for o in outcomes if o.replica == replica.name]
        assert all(o.token_s[-1] <= replica.stopped_s for o in served)
    end = max(o.token_s[-1] for o in outcomes)
    assert any(r.stopped_s < end for r in stopped)
    assert sim.replica_seconds() == pytest.approx(sum(
        (r.stopped_s if r.stopped_s is not None else end) - r.started_s
        for r in sim.pools["colocated"].history))


def test_a_request_to_a_pool_scaled_to_zero_waits_for_a_replica_to_start() -> None:
    scaling = {**SCALING, "min_replicas": 0, "initial_replicas": 0}
    sim = Simulation(PROFILE, model("colocated", colocated={"autoscaling_config": scaling}),
                     [traces.TraceRequest(1.0, 64, 4)], autoscaling="ray_default", startup_s=6)
    (outcome,) = sim.run()
    (action,) = sim.autoscaler.actions
    assert (action.replicas_from, action.replicas_to) == (0, 1)
    assert action.time_s - 1.05 <= CONTROL_LOOP_INTERVAL_S + 1e-9  # at once, no delay
    assert 6.0 < outcome.ttft_s < 6.5


def test_the_slo_policy_grows_the_pd_pool_whose_target_is_missed() -> None:
    """Long prompts at a high rate: prefill misses its TTFT target and grows; the app-level
    policy keeps P:D within the model's bound."""
    slo = {"ttft_ms": 400, "itl_ms": 200, "max_prefill_decode_ratio": 2}
    pools = {"prefill": {"autoscaling_config": SCALING},
             "decode": {"autoscaling_config": SCALING}}
    config = model("pd", slo=slo, **pools)
    trace = traces.poisson(12.0, 400, traces.fixed_lengths(800, 4), seed=3)
    sim = Simulation(PROFILE, config, trace, autoscaling="slo_app", startup_s=5)
    sim.run()
    grown = {a.pool for a in sim.autoscaler.actions if a.replicas_to > a.replicas_from}
    assert "prefill" in grown, sim.autoscaler.actions
    targets = {role: s.target for (_, role), s in sim.autoscaler.pools.items()}
    assert targets["prefill"] / targets["decode"] <= 2


def test_more_engines_stepping_than_cores_share_them() -> None:
    """Two replicas on one core take twice as long per step as on two cores: a replica
    started on a host without a free core adds no capacity."""
    trace = [traces.TraceRequest(0.0, 64, 30), traces.TraceRequest(0.0, 64, 30)]

    def itl(cores: int) -> float:
        profile = PROFILE.model_copy(update={"graph_overhead": GraphOverhead(host_cores=cores)})
        sim = Simulation(profile, model("colocated", colocated={"num_replicas": 2}), trace)
        outcomes = sim.run()
        assert len({o.replica for o in outcomes}) == 2
        return summarize(outcomes)["p50_itl_ms"]

    assert itl(1) == pytest.approx(2 * itl(2), rel=1e-3)


def test_the_policy_a_config_runs_is_read_from_it(tmp_path: Path) -> None:
    config = ROOT / "serve_configs" / "multi_model.yaml"
    app = load_app(config)
    assert autoscaling_policy(config, pick_model(app, "tiny")) == "slo_app"
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text().replace(
        "pdserve.deployments.autoscaling.policy:SLOAutoscalingPolicy", "my.policy:Mine"))
    with pytest.raises(ValueError, match="my.policy:Mine"):
        autoscaling_policy(other, pick_model(load_app(other), "tiny"))
    plain = tmp_path / "plain.yaml"
    text = config.read_text()
    start = text.index("    autoscaling_policy:")
    end = text.index("    args:")
    plain.write_text(text[:start] + text[end:])
    app = load_app(plain)
    assert autoscaling_policy(plain, pick_model(app, "tiny")) == "slo"


def test_same_seed_same_scaling() -> None:
    runs = [colocated("slo") for _ in range(2)]
    for sim in runs:
        sim.run()
    assert runs[0].autoscaler.actions == runs[1].autoscaler.actions


def test_a_run_with_requests_that_cannot_finish_still_ends() -> None:
    """A request stopped at `max_model_len` (1024 here) ends short; the autoscaler's ticks stop
    with the run instead of waiting for it forever, and it counts as failed."""
    trace = [traces.TraceRequest(0.0, 1020, 10), traces.TraceRequest(0.5, 64, 4)]
    sim = Simulation(PROFILE, model("colocated", colocated={"autoscaling_config": SCALING}),
                     trace, autoscaling="ray_default", startup_s=8)
    outcomes = sim.run()
    assert len(outcomes[0].token_s) < 10 and outcomes[1].done
    summary = summarize(outcomes)
    assert (summary["completed"], summary["failed"]) == (1, 1)
