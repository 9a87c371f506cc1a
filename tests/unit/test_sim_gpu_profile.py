"""The hand-written H100 profile: the committed JSON is what its script computes from the
published figures, it validates, and the simulator runs the GPU serve config on it (vLLM's
scheduler built from the model's published config.json alone: no weights, no tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdserve.benchmarks.profiles import h100_llama_3_1_8b as written
from pdserve.simulation import profile_file, traces
from pdserve.simulation.graph import Simulation
from pdserve.simulation.serve_config import load_app, pick_model

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "serve_configs" / "llama8b_h100.yaml"


def test_the_committed_profile_is_what_the_published_figures_give() -> None:
    committed = json.loads(written.OUT.read_text())
    assert committed == json.loads(json.dumps(written.profile().model_dump()))
    profile = profile_file.load(written.OUT)
    assert profile.model == pick_model(load_app(CONFIG), "llama8b").model
    assert profile.kv_cache.bytes_per_token == 2 * 32 * 8 * 128 * 2  # K+V, bf16, GQA 8 heads


def test_an_idle_h100_engine_serves_one_request_as_the_figures_say() -> None:
    profile = profile_file.load(written.OUT)
    model = pick_model(load_app(CONFIG), "llama8b-colo")
    (outcome,) = Simulation(profile, model, [traces.TraceRequest(0.0, 2048, 8)]).run()
    step = profile.step_times
    prefill = (step.base + 2048 * step.per_prefill_token
               + 2048 * (2049 / 2) * step.per_prefill_pair)
    overhead = profile.graph_overhead
    assert outcome.ttft_s == pytest.approx(
        prefill + overhead.per_request_s + 2048 * overhead.per_prompt_token_s, rel=1e-6)
    decode = step.base + step.per_decode + 2049 * step.per_decode_context
    assert outcome.itls_s[0] == pytest.approx(decode, rel=1e-6)
    assert 0.04 < outcome.ttft_s < 0.1 and 0.005 < outcome.itls_s[0] < 0.007


def test_the_gpu_pd_config_autoscales_in_simulation() -> None:
    profile = profile_file.load(written.OUT)
    model = pick_model(load_app(CONFIG), "llama8b")
    trace = traces.poisson(30.0, 900, traces.mixed_lengths(4096, 16, 64, 128), seed=1)
    sim = Simulation(profile, model, trace, autoscaling="slo_app", replica_budget=8)
    outcomes = sim.run()
    assert all(o.done for o in outcomes)
    assert any(a.replicas_to > a.replicas_from for a in sim.autoscaler.actions)
    assert {o.plan for o in outcomes} == {"local", "remote"}
