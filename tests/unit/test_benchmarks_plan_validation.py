"""The plan validation benchmark's pure parts: candidate names, attainment from vLLM's
detailed results, the selection of candidates and the load vLLM's benchmark accepts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pdserve.benchmarks import plan_validation, workloads

ROOT = Path(__file__).resolve().parents[2]
PLAN = json.loads((ROOT / "benchmarks/results/plan-cpu-v1/plan.json").read_text())


def test_candidates_are_named_and_selected_by_size_or_name() -> None:
    names = [plan_validation.slug(e) for e in PLAN["evaluations"]]
    assert names[:3] == ["colocated-1", "colocated-2", "pd-1-1"]
    small = plan_validation.chosen(PLAN, None, max_engines=2)
    assert [plan_validation.slug(e) for e in small] == ["colocated-1", "colocated-2", "pd-1-1"]
    named = plan_validation.chosen(PLAN, "pd-2-1, colocated-3", max_engines=3)
    assert sorted(plan_validation.slug(e) for e in named) == ["colocated-3", "pd-2-1"]


def test_attainment_counts_a_request_only_with_its_ttft_and_every_gap_in_the_slo() -> None:
    result = {"ttfts": [0.5, 0.5, 1.5, 0.2], "itls": [[0.01, 0.02], [0.01, 0.09], [0.01], []],
              "errors": ["", "", "", "boom"], "duration": 10.0}
    met_pct, goodput = plan_validation.attainment(result, ttft_ms=1000, itl_ms=50)
    assert met_pct == pytest.approx(25.0) and goodput == pytest.approx(0.1)
    # why: one late first token and one failed request; one request with a long gap
    assert plan_validation.misses(result["ttfts"], result["itls"], 1000, 50,
                                  result["errors"]) == (2, 1)
    assert plan_validation.misses([None, 0.1], [[], [0.06, 0.07]], 1000, 50) == (1, 1)


def test_the_load_is_the_plans_and_vllms_benchmark_accepts_it() -> None:
    args = argparse.Namespace(num_prompts=None, seed=3)
    system = SimpleNamespace(base_url="http://127.0.0.1:8000", model_name="bench",
                             model_dir="/models/bench")
    argv = plan_validation.bench_argv(PLAN, args, system)
    parsed = workloads.parse_bench_args(argv)
    assert parsed.num_prompts == PLAN["requests"] and parsed.seed == 3
    assert parsed.request_rate == pytest.approx(PLAN["workload"]["rate"])
    assert parsed.random_input_len == round(PLAN["workload"]["prompt"])
    assert parsed.dataset_name == "random"


def test_a_candidate_with_more_engines_than_cores_is_placed_sharing_them(tmp_path: Path) -> None:
    """Ray must place every engine of a candidate on this box (or the app fails to build):
    `num_cpus` is lowered to the CPUs over the engines; candidates that fit keep theirs."""
    import yaml

    from pdserve.deployments.config import AppConfig
    from pdserve.simulation.planner import Candidate, write_config

    source = ROOT / "benchmarks/results/sim-validation-cpu-v1/configs/pd.yaml"
    for candidate, want in ((Candidate("pd", 1, 1), 1.0), (Candidate("pd", 2, 1), 0.66),
                            (Candidate("colocated", 3, 3), 0.66)):
        path = tmp_path / "c.yaml"
        plan_validation.fit_to_cpus(write_config(source, "bench", candidate, path), path, 2)
        args = yaml.safe_load(path.read_text())["applications"][0]["args"]
        (model,) = AppConfig.model_validate(args).models
        assert {p.cpus_per_replica() for p in model.pools().values()} == {want}


def test_the_report_says_why_requests_missed() -> None:
    def pair(m: float, s: float) -> dict:
        return {"measured": m, "low": m, "high": m, "simulated": s, "error_pct": 0.0}

    row = {"candidate": "pd 1P+2D", "engines": 3, "attainment_pct": pair(50, 75),
           "goodput": pair(1.0, 1.5),
           "misses": {"ttft": {"measured": 8, "simulated": 29},
                      "gap": {"measured": 56, "simulated": 0}}}
    result = {"plan": "p", "slo": {}, "recommended": "pd 1P+1D", "best_measured": "pd 1P+2D",
              "recommended_vs_best_goodput": None, "rows": [row]}
    text = plan_validation.markdown(result, {"run_name": "r", "rounds": 3})
    assert "| pd 1P+2D | 8 | 29 | 56 | 0 |" in text
    assert "CPU the engines used" not in text  # runs without per-process CPU
    row["engine_cpu_s"] = {"measured": 76.5, "simulated": 60.0, "ratio": 1.2625}
    assert "| pd 1P+2D | 76.5 | 60.0 | 1.26 |" in plan_validation.markdown(result, {})


def test_a_run_is_matched_to_its_round_by_its_raw_file_name() -> None:
    assert plan_validation.round_of(Path("raw/pd-1-2__plan__r3.json")) == 3


def test_the_report_warns_when_the_profile_is_of_another_cpu() -> None:
    result = {"plan": "p", "slo": {}, "recommended": None, "best_measured": None,
              "recommended_vs_best_goodput": None, "rows": [], "profile": "prof.json",
              "profile_cpu": "AMD EPYC", "measured_cpu": "Intel(R) Xeon(R) Processor"}
    text = plan_validation.markdown(result, {"run_name": "r", "rounds": 3})
    assert "`prof.json`, measured on AMD EPYC" in text
    assert "another CPU (Intel(R) Xeon(R) Processor)" in text
    same = plan_validation.markdown({**result, "measured_cpu": "AMD EPYC"}, {})
    assert "`prof.json`, measured on AMD EPYC" in same and "another CPU" not in same
    unknown = plan_validation.markdown({**result, "measured_cpu": None}, {})
    assert "cannot be checked" in unknown and "another CPU" not in unknown
    assert "graph CPU demand" not in same  # a report written before the window was recorded
    windowed = plan_validation.markdown({**result, "measured_cpu": "AMD EPYC",
                                         "cpu_window_s": 0.5}, {})
    assert "measured on AMD EPYC; graph CPU demand over the last 0.5 s" in windowed


def test_compare_takes_another_profile() -> None:
    args = plan_validation.parse_args(["--plan", "p", "--out", "o", "--compare",
                                       "--profile", "x.json"])
    assert args.compare and args.profile == Path("x.json")
    assert args.report_name == "validation"
    plain = plan_validation.parse_args(["--plan", "p", "--out", "o", "--report-name", "v-amd"])
    assert plain.profile is None and plain.report_name == "v-amd"
    assert plain.cpu_window is None
    windowed = plan_validation.parse_args(["--plan", "p", "--out", "o", "--compare",
                                           "--cpu-window", "0.5"])
    assert windowed.cpu_window == 0.5
