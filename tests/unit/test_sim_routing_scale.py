"""The multi-turn routing scan at scale (`routing_sim_scale`): Ray's default power-of-two
router simulated on the same view as pdserve's router, and the scan's report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdserve.benchmarks import routing_sim_scale
from pdserve.simulation.profile_file import Profile
from pdserve.simulation.replicas import simulates_power_of_two

PROFILE = Path(__file__).parents[2] / "benchmarks" / "profiles" / "h100-llama-3.1-8b.json"


def test_the_pools_router_is_rays_power_of_two_when_the_config_names_it() -> None:
    from pdserve.simulation.graph import Simulation
    from pdserve.simulation.serve_config import pick_model

    profile = Profile.model_validate_json(PROFILE.read_text())
    for router, expected in (("pow2", True), ("pdserve", False)):
        app = routing_sim_scale.app_config(profile, 3, router)
        sim = Simulation(profile, pick_model(app, None), [], seed=0, app=app)
        assert sim.pools["colocated"].ray_power_of_two is expected
        assert len(sim.pools["colocated"].replicas) == 3
    # by either import-path form; pdserve's routers scored as pdserve's; others refused
    assert simulates_power_of_two("ray.serve.request_router.PowerOfTwoChoicesRequestRouter")
    assert not simulates_power_of_two("pdserve.routing.router:DecodeRouter")
    assert not simulates_power_of_two(None)
    with pytest.raises(ValueError, match="PrefixCacheAffinityRouter"):
        simulates_power_of_two("ray.serve.llm.request_router:PrefixCacheAffinityRouter")


def test_past_two_replicas_pow2_scatters_sessions_and_pdserve_keeps_them(tmp_path: Path) -> None:
    """Four H100 engines, 16 chat sessions of 5 turns: pdserve sends every turn of a session
    to the replica holding its prefix; pow2 picks by queue alone (at this load, about at
    random: a turn finds its session's last replica 1 time in 4), so a session's turns spread
    and more of them compute their whole prompt (mean TTFT)."""
    routing_sim_scale.main(["--profile", str(PROFILE), "--replicas", "4", "--seeds", "0",
                            "--sessions-per-replica", "4", "--out", str(tmp_path)])
    rows = {row["router"]: row for row in
            json.loads((tmp_path / "report.json").read_text())["rows"]}
    assert rows["pdserve"]["failed"] == rows["pow2"]["failed"] == 0
    assert rows["pdserve"]["replicas_per_session"] <= 1.2, rows
    assert rows["pow2"]["replicas_per_session"] >= 2.5, rows
    assert rows["pow2"]["mean_ttft_ms"] > 1.2 * rows["pdserve"]["mean_ttft_ms"], rows
    assert "| 4 | pow2 |" in (tmp_path / "report.md").read_text()
