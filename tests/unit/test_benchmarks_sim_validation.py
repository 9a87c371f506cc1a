"""The simulator's validation benchmark: every load is a valid run of vLLM's serving benchmark,
and no two loads draw the same prompts (the simulator replays lengths, not contents, so a
measured prompt found in the prefix cache would be a hit the simulation cannot have)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sim_profiles import PROFILE, model

from pdserve.benchmarks import sim_compare, workloads
from pdserve.benchmarks import sim_validation as sv
from pdserve.benchmarks.systems import System
from pdserve.simulation.profile_file import GraphOverhead


def test_each_load_parses_and_draws_its_own_prompts(tmp_path: Path) -> None:
    args = sv.parse_args(["--out", str(tmp_path)])
    system = System(name="pd", command=["true"], base_url="http://127.0.0.1:8000",
                    model_name="bench", model_dir="/m")
    seeds = {}
    for load in sv.LOADS:
        parsed = workloads.parse_bench_args(sv.load_argv(load, system, args, tmp_path / "d"))
        seeds[load] = parsed.seed
        if load in sv.MAX_CONCURRENCY:  # closed loop: c1, c1-long one at a time, c4 four
            assert parsed.max_concurrency == sv.MAX_CONCURRENCY[load]
        else:
            assert parsed.request_rate in (args.rate, args.mixed_rate)
    assert len(set(seeds.values())) == len(sv.LOADS)
    assert set(sv.CALIBRATION_LOADS) | set(sv.VALIDATION_LOADS) == set(sv.LOADS)
    assert args.cpu_window is None  # the profile's window unless --cpu-window
    assert args.load_cpu  # c4 joins the CPU split unless --concurrency-1-cpu
    assert not sv.parse_args(["--out", str(tmp_path), "--concurrency-1-cpu"]).load_cpu
    assert sv.parse_args(["--out", str(tmp_path), "--cpu-window", "0.5"]).cpu_window == 0.5


def test_the_validation_table_says_when_each_input_was_measured_and_the_engines_work() -> None:
    cell = {"measured": 10.0, "low": 9.0, "high": 11.0, "simulated": 11.0, "error_pct": 10.0}
    overhead = {"per_request_s": 0.02, "per_prompt_token_s": 1e-4, "step_scale": 1.4,
                "per_step_s": 0.0, "cpu_per_request_s": 0.05, "cpu_per_token_s": 0.002,
                "background_cores": 0.1, "host_cores": 2}
    row = {"system": "pd", "load": "poisson", "overhead": overhead,
           **{k: cell for k in (*sv.COMPARED, "p99_itl_ms", "request_throughput")}}
    result = {"profile": "p.json", "calibration": "cal", "prompts": True, "rows": [row],
              "step_times": {"heldout_mape": 10.6, "heldout_p90_ape": 26.8, "noise_mape": 14.6},
              "engine_work": [{"system": "pd", "load": "c1", "ratio": 1.54, "low": 1.52,
                               "high": 2.11},
                              {"system": "pd", "load": "poisson", "ratio": 1.32, "low": 1.3,
                               "high": 1.48}],
              "engine_wait": [{"system": "pd", "load": "poisson", "measured": 4.2, "low": 3.9,
                               "high": 5.0, "simulated": 1.1}],
              "graph_cpu": [{"system": "pd", "load": "c4", "ratio": 0.95, "low": 0.94,
                             "high": 1.11}],
              "window": {"profiled": "2026-12-06T13:34", "calibration_runs": "2026-12-06T13:35",
                         "validated_runs": "2026-12-06T13:35"}}
    measured = {"run_name": "v", "command": "python -m ...", "git_revision": "abc", "rounds": 3}
    text = sim_compare.validation_markdown(result, measured)
    assert "- when: profiled 2026-12-06T13:34, calibration runs from 2026-12-06T13:35" in text
    assert "| pd | 1.54 (1.52–2.11) | — | — | 1.32 (1.30–1.48) | — | — |" in text
    assert "| pd | poisson | p50_ttft_ms | 10.0 (9.0–11.0) | 11.0 | +10.0% |" in text
    assert "| pd | — | — | — | 4.20 (3.90–5.00) / 1.10 | — | — |" in text  # engines' waits
    assert "50 ms per request + 2.00 ms per token" in text  # no CPU per step calibrated
    assert "| pd | — | — | 0.95 (0.94–1.11) | — | — | — |" in text  # the graph's CPU
    row["overhead"] = {**overhead, "cpu_per_step_s": 0.0012}
    assert "50 ms per request + 1.20 ms per engine step + 2.00 ms per token" in (
        sim_compare.validation_markdown(result, measured))
    assert "on 2 cores, demanded over the last 2 s" in text  # a row without a window: 2 s
    row["overhead"] = {**overhead, "cpu_window_s": 0.5}
    assert "demanded over the last 0.5 s" in sim_compare.validation_markdown(result, measured)
    row["overhead"] = {**overhead, "host_cores": None}  # --no-cpu-model: no window applies
    assert "demanded over" not in sim_compare.validation_markdown(result, measured)
    older = sim_compare.validation_markdown({**result, "engine_work": [], "window": None,
                                             "engine_wait": []}, measured)
    assert "- when:" not in older and "Served engines' CPU" not in older
    assert "run-queue wait" not in older


def test_busy_cores_needs_runs_that_recorded_the_engines_wait() -> None:
    rows = [{"wait_s": {"vllm engine core": 1.5, "replica ingress": 3.0}},
            {"wait_s": {"vllm engine core": 0.5}}]
    assert sim_compare.c1_waits(rows, "pd") == [1.5, 0.5]
    with pytest.raises(SystemExit, match="pd's concurrency-1 runs did not record"):
        sim_compare.c1_waits([*rows, {"cpu_s": {"vllm engine core": 9.0}}], "pd")


def test_the_graph_s_cpu_is_compared_with_what_the_simulated_host_charged(
        tmp_path: Path) -> None:
    # one request of 4 tokens, alone: its replay hands 4 steps of a token each; the overhead
    # charges 0.05 + 4 × 0.01 + 4 × 0.005 = 0.11 s, the graph's traffic roles used 0.165 s
    # (Ray's upkeep and the engines apart)
    (tmp_path / "raw").mkdir()
    raw = {"start_times": [0.0], "input_lens": [64], "output_lens": [4], "ttfts": [0.1],
           "itls": [[0.01] * 3], "completed": 1, "total_output_tokens": 4}
    (tmp_path / "raw" / "colocated__c4__r1.json").write_text(json.dumps(raw))
    report_ = {"results": [{"system": "colocated", "load": "c4", "round": 1,
                            "summary": {"completed": 1},
                            "cpu_s": {"replica ingress": 0.1, "harness (load generator)": 0.065,
                                      "ray system": 5.0, "vllm engine core": 9.0}}]}
    overhead = GraphOverhead(cpu_per_request_s=0.05, cpu_per_step_s=0.01, cpu_per_token_s=0.005)
    colocated = model("colocated", colocated={"num_replicas": 1})
    ratios = sim_compare.graph_cpu(PROFILE, colocated, overhead, tmp_path, report_, "colocated",
                                   "c4", prompts=False)
    assert ratios == pytest.approx([1.5])
    assert sim_compare.graph_cpu(PROFILE, colocated, overhead, tmp_path, report_, "colocated",
                                 "poisson", prompts=False) == []


def test_c4_calibrates_the_graph_s_cpu_only(tmp_path: Path) -> None:
    def row(load: str, n: int, cpu: bool = True) -> dict:
        return {"system": "pd", "load": load, "round": n, "summary": {"completed": 1},
                **({"cpu_s": {"replica ingress": 1.0}} if cpu else {})}

    report_ = {"results": [row("c4", 2), row("c1", 2), row("poisson", 1), row("c1-long", 1),
                           row("c1", 1), row("c4", 1, cpu=False),
                           {**row("c1", 3), "summary": None}]}
    c1_rows, load_runs = sim_compare.calibration_rows(report_, tmp_path, "pd")
    assert [(r["load"], r["round"]) for r in c1_rows] == [("c1", 1), ("c1-long", 1), ("c1", 2)]
    assert load_runs == [(tmp_path / "raw" / "pd__c4__r2.json", {"replica ingress": 1.0})]
    assert sim_compare.calibration_rows(report_, tmp_path, "colocated") == ([], [])
