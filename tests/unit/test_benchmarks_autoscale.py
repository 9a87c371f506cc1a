"""Pure parts of the autoscaling benchmark: the trace, the accounting, the configs."""

from __future__ import annotations

from pdserve.benchmarks.autoscale_bench import (
    MODEL_A,
    MODEL_B,
    SLO,
    Phase,
    arrivals,
    default_phases,
    prompts,
    rate_at,
    serve_config,
)
from pdserve.benchmarks.autoscale_report import (
    replica_seconds,
    report,
    scaling_actions,
    summarize,
)
from pdserve.deployments.app import planner_profile
from pdserve.deployments.config import AppConfig


def test_rate_follows_the_phases_and_arrivals_are_deterministic() -> None:
    phases = [Phase("ramp", 100, {MODEL_A: 0.0}, {MODEL_A: 2.0}),
              Phase("flat", 100, {MODEL_A: 2.0}, {MODEL_A: 2.0})]
    assert rate_at(phases, 50, MODEL_A) == 1.0 and rate_at(phases, 150, MODEL_A) == 2.0
    assert rate_at(phases, 250, MODEL_A) == 0.0
    times = arrivals(phases, MODEL_A, seed=1)
    assert times == arrivals(phases, MODEL_A, seed=1) != arrivals(phases, MODEL_A, seed=2)
    first, second = [t for t in times if t < 100], [t for t in times if t >= 100]
    assert 60 < len(first) < 140 and 150 < len(second) < 250  # expected 100 and 200


def test_replica_seconds_and_actions() -> None:
    timeline = [{"t": 0.0, "a/prefill": 1, "b/colocated": 1},
                {"t": 10.0, "a/prefill": 2, "b/colocated": 1},
                {"t": 20.0, "a/prefill": 1, "b/colocated": 1}]
    assert replica_seconds(timeline) == 2 * 10 + 3 * 10
    assert scaling_actions(timeline) == 2


def test_attainment_needs_both_targets_and_counts_failures_as_misses() -> None:
    records = [
        {"model": MODEL_A, "ok": True, "ttft_ms": 100.0, "itl_ms": 10.0},
        {"model": MODEL_A, "ok": True, "ttft_ms": 5000.0, "itl_ms": 10.0},
        {"model": MODEL_A, "ok": True, "ttft_ms": 100.0, "itl_ms": 900.0},
        {"model": MODEL_B, "ok": False, "error": "HTTP 503"},
    ]
    summary = summarize("x", records, [{"t": 0.0, "p": 1}, {"t": 1.0, "p": 1}], SLO)
    assert summary[MODEL_A]["slo_attainment"] == 1 / 3
    assert summary[MODEL_B]["failed"] == 1 and summary["slo_attainment"] == 1 / 4


def test_both_policies_run_the_same_validated_app_but_for_the_policy() -> None:
    ours, ray = (serve_config(p, "/m") for p in ("pdserve_slo", "ray_default"))
    for config in (ours, ray):
        AppConfig.model_validate(config["applications"][0]["args"])
    assert "autoscaling_policy" in ours["applications"][0]
    assert "autoscaling_policy" not in ray["applications"][0]
    for model in (0, 1):
        mine = ours["applications"][0]["args"]["models"][model]
        theirs = ray["applications"][0]["args"]["models"][model]
        assert mine["engine_kwargs"] == theirs["engine_kwargs"]
    assert sum(p.seconds for p in default_phases()) >= 480


def test_prompts_are_long_enough_and_deterministic() -> None:
    a = prompts(MODEL_A, 2, seed=0)
    assert a == prompts(MODEL_A, 2, seed=0) and a[0] != a[1]
    assert len(a[0].split()) > 380 and len(prompts(MODEL_B, 1, seed=0)[0].split()) > 60


def test_our_policy_runs_with_planner_floors_from_profiles_in_the_repository() -> None:
    config = AppConfig.model_validate(serve_config("pdserve_slo", "/m")["applications"][0]["args"])
    for i, model in enumerate(config.models):
        assert model.planner is not None and planner_profile(config, i)["model"]
    bare = serve_config("pdserve_slo", "/m", planner=False)["applications"][0]["args"]
    assert all("planner" not in m for m in bare["models"])


def test_the_report_gives_each_policys_median_over_rounds() -> None:
    def row(policy: str, k: int, attainment: float, seconds: float) -> dict:
        per_model = {"slo_attainment": attainment, "ttft_p50_ms": 1.0, "ttft_p99_ms": 2.0,
                     "itl_p50_ms": 1.0, "itl_p99_ms": 2.0, "failed": 0}
        return {"policy": policy, "round": k, "slo_attainment": attainment,
                "replica_seconds": seconds, "scaling_actions": 1,
                MODEL_A: per_model, MODEL_B: per_model}

    rows = [row("pdserve_slo", 1, 0.9, 100), row("ray_default", 1, 0.5, 300),
            row("pdserve_slo", 2, 0.7, 140), row("ray_default", 2, 0.6, 200),
            row("pdserve_slo", 3, 0.8, 120), row("ray_default", 3, 0.4, 250)]
    text = report(rows, "cmd", default_phases(), SLO)
    assert "| pdserve_slo | 3 | 80.0 (70.0–90.0) | 120 (100–140) |" in text
    assert "| ray_default r2 |" in text
    assert "Attainment 80.0% vs 50.0%; replica-seconds 0.48x of Ray's (medians)." in text


def test_rate_scale_multiplies_every_rate_and_keeps_the_shape() -> None:
    base, heavy = default_phases(), default_phases(rate_scale=4.0)
    assert [p.seconds for p in heavy] == [p.seconds for p in base]
    for b, h in zip(base, heavy, strict=True):
        for model in (MODEL_A, MODEL_B):
            assert h.start_rps[model] == 4.0 * b.start_rps[model]
            assert h.end_rps[model] == 4.0 * b.end_rps[model]
    assert len(arrivals(heavy, MODEL_A, 0)) > 3 * len(arrivals(base, MODEL_A, 0))


def test_a_rate_scale_of_zero_is_refused(tmp_path) -> None:
    import pytest

    from pdserve.benchmarks.autoscale_bench import main

    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--rate-scale", "0"])
    assert not any(tmp_path.iterdir())
