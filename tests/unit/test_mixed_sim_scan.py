"""The mixed workload's simulated rate scan: same-seed ratios, medians, and a small scan on the
committed calibrated profiles whose report names both systems at every rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdserve.benchmarks import mixed_sim_scan

PROFILES = Path(__file__).parents[2] / "benchmarks" / "results" / "sim-calibration-cpu-v2"


def test_the_ratio_pairs_runs_of_the_same_seed() -> None:
    pd = [{"p99_itl_ms": 10.0}, {"p99_itl_ms": 60.0}, {"p99_itl_ms": 30.0}]
    colocated = [{"p99_itl_ms": 100.0}, {"p99_itl_ms": 60.0}, {"p99_itl_ms": 600.0}]
    # same-seed ratios 0.1, 1.0, 0.05: median 0.1 (the medians' ratio would be 0.3, sorted
    # pairs 0.167)
    assert mixed_sim_scan.itl_ratio(pd, colocated) == 0.1
    assert mixed_sim_scan.medians(pd) == {"p99_itl_ms": 30.0}


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
    # the same requests four times as close together: colocated's prefill stalls reach its
    # p99 (observed, deterministic per seed)
    assert rows[1]["colocated"]["p99_itl_ms"] >= rows[0]["colocated"]["p99_itl_ms"]
    table = (tmp_path / "sim-scan.md").read_text()
    assert "| 2 | pd |" in table and "| 0.5 | colocated |" in table


def test_a_prefill_threshold_outside_the_prompt_lengths_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="local-prefill-below-tokens"):
        mixed_sim_scan.main(["--rates", "1", "--pd-profile", "p.json", "--colocated-profile",
                             "c.json", "--local-prefill-below-tokens", "32",
                             "--out", str(tmp_path)])
