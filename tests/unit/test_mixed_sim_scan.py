"""The mixed workload's simulated rate scan: same-seed ratios, medians, and a small scan on the
committed calibrated profiles whose report names both systems at every rate."""

from __future__ import annotations

import json
from pathlib import Path

from pdserve.benchmarks import mixed_sim_scan

PROFILES = Path(__file__).parents[2] / "benchmarks" / "results" / "sim-calibration-cpu-v2"


def test_the_ratio_pairs_runs_of_the_same_seed() -> None:
    pd = [{"p99_itl_ms": 50.0}, {"p99_itl_ms": 60.0}, {"p99_itl_ms": 30.0}]
    colocated = [{"p99_itl_ms": 500.0}, {"p99_itl_ms": 60.0}, {"p99_itl_ms": 600.0}]
    assert mixed_sim_scan.itl_ratio(pd, colocated) == 0.1  # 0.1, 1.0, 0.05
    assert mixed_sim_scan.medians(pd) == {"p99_itl_ms": 50.0}


def test_a_scan_simulates_both_systems_at_each_rate(tmp_path: Path) -> None:
    mixed_sim_scan.main(["--rates", "0.5,2", "--num-prompts", "12", "--seeds", "0",
                         "--pd-profile", str(PROFILES / "profile-pd.json"),
                         "--colocated-profile", str(PROFILES / "profile-colocated.json"),
                         "--model", "pdserve://bench", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "sim-scan.json").read_text())["rows"]
    assert [r["rate"] for r in rows] == [0.5, 2.0]
    for row in rows:
        for name in ("pd", "colocated"):
            assert row[name]["p99_itl_ms"] > 0 and row[name]["slo_goodput"] > 0
            assert len(row["runs"][name]) == 1
    # a faster arrival rate cannot give colocated's decodes fewer long gaps
    assert rows[1]["colocated"]["p99_itl_ms"] >= rows[0]["colocated"]["p99_itl_ms"]
    table = (tmp_path / "sim-scan.md").read_text()
    assert "| 2 | pd |" in table and "| 0.5 | colocated |" in table
