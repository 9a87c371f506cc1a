"""Several models of one app on one clock: the application-level policy shares the replica
budget between them in simulation as it does served."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sim_profiles import ENGINE, PROFILE

from pdserve.cli import main
from pdserve.deployments.config import AppConfig
from pdserve.simulation import traces
from pdserve.simulation.app_sim import AppSimulation

SCALING = {"min_replicas": 1, "max_replicas": 3, "metrics_interval_s": 2,
           "look_back_period_s": 10, "upscale_delay_s": 5, "downscale_delay_s": 60}


def app(budget: int) -> AppConfig:
    def model(name: str) -> dict:
        return {"model_id": name, "model": "pdserve://tiny", "mode": "colocated",
                "engine_kwargs": ENGINE, "slo": {"ttft_ms": 500, "itl_ms": 100},
                "colocated": {"autoscaling_config": SCALING}}

    return AppConfig.model_validate({"replica_budget": budget,
                                     "models": [model("busy"), model("quiet")]})


#: `busy` needs more than one engine from 20 s on; `quiet` never does.
BUSY = traces.poisson(1.0, 20, traces.fixed_lengths(400, 40), seed=1) + [
    traces.TraceRequest(20 + r.arrival_s, 400, 40)
    for r in traces.poisson(25.0, 800, traces.fixed_lengths(400, 40), seed=2)]
QUIET = traces.poisson(0.5, 25, traces.fixed_lengths(64, 8), seed=3)


def run(budget: int) -> AppSimulation:
    config = app(budget)
    sim = AppSimulation(PROFILE, config, config.models, {"busy": BUSY, "quiet": QUIET},
                        "slo_app", startup_s=5)
    outcomes = sim.run()
    assert all(o.done for trace in outcomes.values() for o in trace)
    return sim


def peak(sim: AppSimulation) -> int:
    """Most engines of the app alive at once."""
    changes = sorted((t, d) for s in sim.sims.values() for p in s.pools.values()
                     for r in p.history
                     for t, d in ((r.started_s, 1), *(((r.stopped_s, -1),)
                                                      if r.stopped_s is not None else ())))
    alive = top = 0
    for _, d in changes:
        alive += d
        top = max(top, alive)
    return top


def test_the_busy_model_takes_the_budget_the_quiet_one_leaves() -> None:
    sim = run(budget=3)
    grown = {a.model for a in sim.autoscaler.actions if a.replicas_to > a.replicas_from}
    assert grown == {"busy"}, sim.autoscaler.actions
    assert peak(sim) <= 3  # 1 quiet + at most 2 busy: the shared budget
    assert sim.sims["busy"].loop is sim.sims["quiet"].loop is sim.autoscaler.loop
    wider = run(budget=4)
    assert max(a.replicas_to for a in wider.autoscaler.actions) == 3 and peak(wider) == 4


def test_the_cli_simulates_models_of_one_config_together(tmp_path: Path) -> None:
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump({"applications": [{
        "name": "pdserve", "import_path": "pdserve.deployments.app:build_app",
        "autoscaling_policy": {"policy_function":
                               "pdserve.deployments.autoscaling.policy:SLOAutoscalingPolicy"},
        "args": app(3).model_dump(mode="json", exclude_defaults=True)}]}))
    PROFILE.save(tmp_path / "profile.json")
    out = tmp_path / "out"
    assert main(["simulate", "--profile", str(tmp_path / "profile.json"), "--config",
                 str(config), "--model", "busy", "--also-model", "quiet", "--rate", "2",
                 "--num-requests", "40", "--prompt-tokens", "200", "--output-tokens", "10",
                 "--slo-ttft-ms", "500", "--slo-itl-ms", "100", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| busy | 40 |" in report and "| quiet | 40 |" in report and "| **app** | 80 |" in report


def test_a_planner_profile_given_to_the_simulator_runs_the_slow_loop(tmp_path: Path) -> None:
    from pdserve.simulation.graph import Simulation
    from pdserve.simulation.serve_config import with_planner

    PROFILE.save(tmp_path / "profile.json")
    model = app(3).models[0]
    assert with_planner(model, None) is model
    planned = with_planner(model, tmp_path / "profile.json")
    assert planned.planner.profile == str(tmp_path / "profile.json")
    sim = Simulation(PROFILE, planned, QUIET, autoscaling="slo_app")
    assert sim.autoscaler.planners["busy"][1] == 60.0
    sim.run()
    assert sim.autoscaler.capacities  # each replica estimated what an engine carries


def test_a_model_that_keeps_arriving_after_the_other_ended_is_still_scaled() -> None:
    """The quiet model ends at ~50 s; the busy one starts its burst at 60 s: the shared
    autoscaler keeps ticking for it, and every engine of the app counts until the last token."""
    late = [traces.TraceRequest(40 + r.arrival_s, r.prompt_tokens, r.output_tokens)
            for r in BUSY]
    config = app(3)
    sim = AppSimulation(PROFILE, config, config.models, {"busy": late, "quiet": QUIET},
                        "slo_app", startup_s=5)
    outcomes = sim.run()
    assert all(o.done for trace in outcomes.values() for o in trace)
    ups = [a for a in sim.autoscaler.actions if a.replicas_to > a.replicas_from]
    quiet_end = max(o.token_s[-1] for o in outcomes["quiet"])
    assert ups and min(a.time_s for a in ups) > quiet_end
    end = max(o.token_s[-1] for o in outcomes["busy"])
    assert sim.sims["quiet"].replica_seconds(end) == pytest.approx(end)  # its one engine


def test_models_are_named_once_each(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["simulate", "--profile", "p", "--config", "c", "--model", "busy",
                 "--also-model", "busy", "--rate", "1", "--out", str(tmp_path)]) == 2
    assert "named twice" in capsys.readouterr().err
