"""The mixed-workload benchmark: its two systems are valid pdserve apps on equal hardware, and
its per-kind latencies and TTFT+ITL goodput come out right from vLLM's per-request lists."""

from __future__ import annotations

import pytest

from pdserve.benchmarks import mixed_bench as mb


def test_pd_and_colocated_run_two_one_core_engines_with_the_same_engine_arguments() -> None:
    from pdserve.deployments.config.app import AppConfig

    pools = {}
    for doc in (mb.pd_config("pdserve://bench", 256), mb.colocated_config("pdserve://bench")):
        (app,) = doc["applications"]
        (model,) = AppConfig.model_validate(app["args"]).models
        assert model.engine_kwargs == mb.ENGINE
        for role in ("prefill", "decode", "colocated"):
            pool = getattr(model, role, None)
            if pool is not None:
                pools[(model.mode, role)] = (pool.num_replicas, pool.ray_actor_options)
    one_core = {"num_cpus": 1}
    assert pools == {("pd", "prefill"): (1, one_core), ("pd", "decode"): (1, one_core),
                     ("colocated", "colocated"): (2, one_core)}


def test_per_kind_latencies_and_goodput_under_ttft_and_itl_slo() -> None:
    result = {
        "duration": 10.0,
        "input_lens": [1536, 64, 64, 1536, 64],
        "ttfts": [2.0, 0.05, 0.05, 4.0, 0.05],         # s; 4.0 misses a 3000 ms TTFT SLO
        "itls": [[0.01], [0.01] * 99 + [0.3], [0.02] * 100, [0.01], [0.01]],  # one 300 ms gap
        "errors": ["", "", "", "", "boom"],             # a failed request never counts
    }
    out = mb.mixed_summary(result, split_at_tokens=800, slo_ttft_ms=3000, slo_itl_ms=100)
    assert out["long_prompt_p50_ttft_ms"] == pytest.approx(3000.0)
    assert out["long_decode_p99_itl_ms"] == pytest.approx(20.0)  # 199 gaps: p99 is the 197th
    # each long decode's worst gap: 300 ms and 20 ms (the failed one is not counted)
    assert (out["long_decode_worst_gap_p50_ms"], out["long_decode_worst_gap_p90_ms"]) == (
        pytest.approx(20.0), pytest.approx(300.0))
    assert out["slo_goodput"] == pytest.approx(0.2)  # requests 0 and 2 met it
    assert out["slo_met_pct"] == pytest.approx(40.0)


def test_local_prefill_threshold_must_split_the_two_kinds(tmp_path) -> None:
    with pytest.raises(SystemExit, match="between --short-prompt and --long-prompt"):
        mb.main(["--local-prefill-below-tokens", "32", "--out", str(tmp_path)])


def test_rayllm_pd_config_is_valid_for_ray_serve_llm() -> None:
    from ray.serve.llm import LLMConfig

    (app,) = mb.rayllm_pd_config("/models/bench")["applications"]
    assert app["import_path"] == "ray.serve.llm:build_pd_openai_app"
    cores = set()
    for side, role in (("prefill_config", "kv_producer"), ("decode_config", "kv_consumer")):
        llm = LLMConfig.model_validate(app["args"][side])
        assert llm.accelerator_config.kind == "cpu"
        assert llm.engine_kwargs["kv_transfer_config"]["kv_role"] == role
        cores.add(llm.runtime_env["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"])
    assert cores == {"0", "1"}  # one core per engine, as pdserve binds its engines
