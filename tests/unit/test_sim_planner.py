"""The planner: its closed forms (`estimates.py`), its pruning, its choice, and the serve
config it writes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from sim_profiles import PROFILE, model

from pdserve.deployments.config.app import AppConfig
from pdserve.simulation import estimates, planner, traces
from pdserve.simulation.estimates import Candidate, Estimate, Workload
from pdserve.simulation.planner import Evaluation

ROOT = Path(__file__).resolve().parents[2]


def test_candidates_within_a_budget() -> None:
    labels = [c.label() for c in estimates.candidates(3)]
    assert labels == ["colocated ×1", "colocated ×2", "colocated ×3", "pd 1P+1D", "pd 1P+2D",
                      "pd 2P+1D"]
    assert [c.engines for c in estimates.candidates(3)] == [1, 2, 3, 2, 3, 3]


def test_the_decode_batch_is_littles_fixed_point_and_prefill_queues_as_md1() -> None:
    load = Workload(rate=4.0, prompt=200, output=50)
    est = estimates.estimate(PROFILE, load, Candidate("pd", 1, 2), chunk=256, max_num_seqs=16)
    t, per_step = PROFILE.step_times, PROFILE.graph_overhead.per_step_s
    c = t.per_decode + (200 + 25) * t.per_decode_context
    demand = 4.0 / 2 * 50
    base = t.base + per_step
    assert demand * (base + est.batch * c) == pytest.approx(est.batch)  # B = λ·out·t(B)
    assert est.itl_s == pytest.approx(base + est.batch * c)
    service = estimates.prefill_seconds(PROFILE, 200, 256) + per_step
    assert est.prefill_util == pytest.approx(4.0 * service)
    wait = est.prefill_util * service / (2 * (1 - est.prefill_util))
    transfer = PROFILE.kv_transfer.alpha_s + 200 * 4096 / PROFILE.kv_transfer.bytes_per_s
    assert est.ttft_s == pytest.approx(0.05 + service + wait + transfer + est.itl_s)
    # A served prompt's engine time per token computed is prefill service: it queues too.
    engine_cost = PROFILE.model_copy(update={"graph_overhead": PROFILE.graph_overhead.model_copy(
        update={"per_prefill_token_s": 1e-4})})
    slower = estimates.estimate(engine_cost, load, Candidate("pd", 1, 2), chunk=256,
                                max_num_seqs=16)
    assert slower.prefill_util == pytest.approx(4.0 * (service + 200 * 1e-4))
    assert slower.ttft_s - est.ttft_s > 200 * 1e-4
    overloaded = estimates.estimate(PROFILE, Workload(rate=400.0, prompt=200, output=50),
                                  Candidate("pd", 1, 1), chunk=256, max_num_seqs=16)
    assert math.isinf(overloaded.decode_util) and not overloaded.feasible(10, 10)


def test_a_mix_of_prompts_queues_longer_than_its_mean_and_short_ones_stay_on_decode() -> None:
    mixed = Workload(rate=3.0, prompt=320, output=40, prompts=(600, 40) * 50)
    mean_only = Workload(rate=3.0, prompt=320, output=40, prompts=(320,) * 100)
    pd = Candidate("pd", 1, 1)
    remote_all = estimates.estimate(PROFILE, mixed, pd, chunk=256, max_num_seqs=16)
    assert remote_all.ttft_s > estimates.estimate(PROFILE, mean_only, pd, chunk=256,
                                                max_num_seqs=16).ttft_s  # E[S²] > E[S]²
    local_short = estimates.estimate(PROFILE, mixed, pd, chunk=256, max_num_seqs=16,
                                   local_below=128)
    assert local_short.prefill_util < remote_all.prefill_util  # the 40-token half stays local
    assert local_short.itl_s > remote_all.itl_s  # ... and rides the decodes' steps
    colocated = estimates.estimate(PROFILE, mixed, Candidate("colocated", 1, 1), chunk=256,
                                 max_num_seqs=16)
    assert colocated.itl_s > local_short.itl_s


def test_pruning_keeps_the_smallest_feasible_of_each_kind_and_a_few_more() -> None:
    ok, bad = Estimate(0.5, 0.5, 0.1, 0.01, 2), Estimate(1.2, 0.5, 9, 0.01, 2)
    by_candidate = {Candidate("colocated", n, n): ok if n >= 2 else bad for n in range(1, 7)}
    by_candidate[Candidate("pd", 1, 1)] = ok
    kept = estimates.prune(by_candidate, ttft_s=1.0, itl_s=0.05, keep=2)
    assert [c.label() for c in kept] == ["colocated ×2", "colocated ×3", "colocated ×4",
                                         "pd 1P+1D"]


def test_the_frontier_and_the_recommendation() -> None:
    def ev(mode: str, p: int, d: int, met: float, goodput: float) -> Evaluation:
        return Evaluation(Candidate(mode, p, d), Estimate(0, 0, 0, 0, 0),
                          {"slo_met_pct": met, "slo_goodput": goodput})

    small_miss = ev("colocated", 1, 1, 60.0, 1.0)  # best per engine, misses the target
    pd = ev("pd", 1, 1, 99.0, 1.9)
    big = ev("colocated", 3, 3, 99.0, 1.9)  # as good as pd, more engines
    assert planner.recommend([small_miss, pd, big], attainment=90) is pd
    assert planner.frontier([small_miss, pd, big]) == [small_miss, pd]
    assert planner.recommend([small_miss], attainment=90) is None


def test_more_load_needs_more_engines_and_the_plan_is_simulated() -> None:
    lengths = traces.fixed_lengths(600, 40)
    light = traces.poisson(1.0, 60, lengths, seed=1)
    heavy = traces.poisson(8.0, 240, lengths, seed=1)
    config = model("pd")
    chosen = []
    for trace in (light, heavy):
        evaluations, estimated = planner.plan(PROFILE, config, trace, 1000, 100, 90, budget=4)
        assert len(estimated) == 10 and evaluations
        assert all(e.summary["completed"] == len(trace) for e in evaluations)
        chosen.append(planner.recommend(evaluations, 90))
    assert chosen[0] is not None and chosen[1] is not None
    assert chosen[1].candidate.engines > chosen[0].candidate.engines


def test_a_faster_trace_is_held_by_more_engines_only() -> None:
    trace = traces.poisson(2.0, 80, traces.fixed_lengths(600, 40), seed=2)
    one, two = (planner.max_rate_scale(PROFILE, model("colocated"), trace,
                                       Candidate("colocated", n, n), 1000, 100, 90, seed=0)
                for n in (1, 2))
    assert 0 < one < two


def test_the_recommended_config_is_ready_to_run(tmp_path: Path) -> None:
    source = ROOT / "serve_configs" / "llama8b_h100.yaml"
    out = tmp_path / "plan.yaml"
    planner.write_config(source, "llama8b", Candidate("colocated", 3, 3), out)
    text = out.read_text()
    assert "&id" not in text and "*id" not in text
    doc = yaml.safe_load(text)
    app = AppConfig.model_validate(doc["applications"][0]["args"])
    (llama,) = [m for m in app.models if m.model_id == "llama8b"]
    assert llama.mode == "colocated" and llama.prefill is None
    assert llama.colocated.autoscaling_config["min_replicas"] == 3
    assert llama.colocated.ray_actor_options["num_gpus"] == 1
    assert app.replica_budget == 8  # 3 + the colocated model's 1 fit the 8 GPUs
    planner.write_config(ROOT / "serve_configs" / "default.yaml", "tiny",
                         Candidate("pd", 2, 1), out)
    app = AppConfig.model_validate(yaml.safe_load(out.read_text())["applications"][0]["args"])
    (tiny,) = app.models
    assert (tiny.prefill.num_replicas, tiny.decode.num_replicas) == (2, 1)
    multi = ROOT / "serve_configs" / "multi_model.yaml"  # budget 4; tiny-colo's floor is 0
    for candidate, budget in ((Candidate("pd", 2, 2), 4), (Candidate("pd", 3, 2), 5)):
        planner.write_config(multi, "tiny", candidate, out)
        args = yaml.safe_load(out.read_text())["applications"][0]["args"]
        assert AppConfig.model_validate(args).replica_budget == budget
