"""The multi-turn routing scan at scale (`routing_sim_scale`): Ray's default power-of-two
router simulated on the same view as pdserve's router, and the scan's report."""

from __future__ import annotations

import json
from pathlib import Path

from pdserve.benchmarks import routing_sim_scale
from pdserve.simulation.profile_file import Profile

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


def test_past_two_replicas_pow2_scatters_sessions_and_pdserve_keeps_them(tmp_path: Path) -> None:
    """Four H100 engines, 16 chat sessions of 5 turns: pow2 sends a session's next turn to a
    replica that may not hold its prefix (1 in 4), pdserve to the one that does; the first token
    of a turn that misses waits for its whole prefill."""
    routing_sim_scale.main(["--profile", str(PROFILE), "--replicas", "4", "--seeds", "0",
                            "--sessions-per-replica", "4", "--out", str(tmp_path)])
    rows = {row["router"]: row for row in
            json.loads((tmp_path / "report.json").read_text())["rows"]}
    assert rows["pdserve"]["failed"] == rows["pow2"]["failed"] == 0
    assert rows["pow2"]["p50_ttft_ms"] > 1.5 * rows["pdserve"]["p50_ttft_ms"], rows
    assert rows["pdserve"]["pow2_over_pdserve"] > 1.5
    assert "| 4 | pow2 |" in (tmp_path / "report.md").read_text()
