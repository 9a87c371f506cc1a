"""The overhead benchmark's configs (validated by Ray Serve LLM's and pdserve's own models) and
its per-round medians and ratios (over fake results)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdserve.benchmarks import overhead_bench as ob
from pdserve.benchmarks import rounds
from pdserve.deployments.engine.sleeping_wait import DEFAULT_SPIN_S, SPIN_ENV


def test_rayllm_config_is_valid_for_ray_serve_llm() -> None:
    from ray.serve.llm import LLMServingArgs

    for interval in (None, 0):
        doc = ob.rayllm_config("/models/bench", interval)
        (app,) = doc["applications"]
        assert app["import_path"] == "ray.serve.llm:build_openai_app"
        args = LLMServingArgs.model_validate(app["args"])
        (llm,) = args.llm_configs
        assert llm.engine_kwargs == ob.ENGINE
        assert llm.accelerator_config.kind == "cpu"
        assert llm.experimental_configs.get("stream_batching_interval_ms") == interval
        assert args.ingress_deployment_config["ray_actor_options"]["num_cpus"] == 0


def test_pdserve_config_serves_the_same_engine_colocated() -> None:
    from pdserve.deployments.config.app import AppConfig

    (app,) = ob.pdserve_config("pdserve://bench")["applications"]
    config = AppConfig.model_validate(app["args"])
    (model,) = config.models
    assert model.mode == "colocated" and model.engine_kwargs == ob.ENGINE


def _row(rnd: int, system: str, load: str, ttft: float, rps: float) -> dict:
    return {"round": rnd, "system": system, "load": load, "summary": {
        "p50_ttft_ms": ttft, "p50_tpot_ms": 10.0, "p50_itl_ms": 10.0,
        "request_throughput": rps}}


def test_medians_and_same_round_ratios() -> None:
    rows = [
        _row(1, "vllm", "c1", 100.0, 5.0), _row(1, "pdserve", "c1", 150.0, 4.0),
        _row(2, "vllm", "c1", 200.0, 5.0), _row(2, "pdserve", "c1", 220.0, 5.0),
        _row(3, "vllm", "c1", 100.0, 4.0), _row(3, "pdserve", "c1", 130.0, 2.0),
        {"round": 3, "system": "rayllm", "load": "c1", "summary": None, "error": "boom"},
    ]
    cells = ob.summarize(rows)
    assert ("rayllm", "c1") not in cells  # failed steps are listed, not averaged
    ours = cells[("pdserve", "c1")]
    assert ours.rounds == 3
    assert ours.median["p50_ttft_ms"] == 150.0
    assert (ours.low["p50_ttft_ms"], ours.high["p50_ttft_ms"]) == (130.0, 220.0)
    # Per-round ratios 1.5, 1.1, 1.3: the median is 1.3, not 150 / 100.
    assert ours.ratio["p50_ttft_ms"] == pytest.approx(1.3)
    assert ours.ratio_low["p50_ttft_ms"] == pytest.approx(1.1)
    assert ours.ratio["request_throughput"] == pytest.approx(0.8)
    assert cells[("vllm", "c1")].ratio["p50_ttft_ms"] == 1.0


def test_vllm_sleeping_is_plain_vllm_with_pdserve_engines_wait() -> None:
    """The same server command as `vllm`; only the plugin's switch differs (as pdserve's engine
    host sets it), so the pair measures the wait and pdserve vs it measures the graph."""
    plain = ob.build_system("vllm", "pdserve://bench", "/m", Path("/tmp"))
    sleeping = ob.build_system("vllm-sleeping", "pdserve://bench", "/m", Path("/tmp"))
    assert sleeping.command == plain.command and plain.env == {}
    assert sleeping.env == {SPIN_ENV: DEFAULT_SPIN_S}


def test_pdserve_fast_runs_behind_haproxy_and_pyproxy_behind_rays_python_proxy() -> None:
    """The same app and command for every pdserve system; Ray's environment differs only in
    the proxy: `pdserve-fast` is what `make serve` exports (HAProxy mode through pdserve's
    launcher), `pdserve-pyproxy` the same with it off (said explicitly), `pdserve-haproxy`
    Ray's switch alone over `pdserve-pyproxy` (as run before pdserve's launcher)."""
    from pdserve.deployments.config.ray_serve_env import (
        HAPROXY_BINARY_ENV,
        RAY_HAPROXY_FLAG,
        RAY_SERVE_HAPROXY_ENV,
        ray_start_env,
    )

    built = {name: ob.build_system(name, "pdserve://bench", "/m", Path("/tmp/ob"))
             for name in ("pdserve-fast", "pdserve-pyproxy", "pdserve-haproxy")}
    fast, pyproxy, haproxy = built.values()
    assert fast.command == pyproxy.command == haproxy.command
    assert ray_start_env().items() <= fast.env.items() and HAPROXY_BINARY_ENV in fast.env
    assert pyproxy.env[RAY_HAPROXY_FLAG] == "0" and HAPROXY_BINARY_ENV not in pyproxy.env
    assert {k: v for k, v in fast.env.items() if pyproxy.env.get(k) != v} == {
        **RAY_SERVE_HAPROXY_ENV, HAPROXY_BINARY_ENV: fast.env[HAPROXY_BINARY_ENV]}
    assert {k: v for k, v in haproxy.env.items() if pyproxy.env.get(k) != v} == {
        RAY_HAPROXY_FLAG: "1"}


def test_unknown_system_is_named() -> None:
    with pytest.raises(SystemExit, match="rayllm-nobatch"):
        ob.build_system("sglang", "pdserve://bench", "/m", Path("/tmp"))


def test_more_rounds_continue_the_report_in_place(tmp_path: Path) -> None:
    import json

    first = [_row(1, "vllm", "c1", 100.0, 5.0), _row(1, "pdserve", "c1", 150.0, 4.0)]
    older = {"command": "... --rounds 1", "git_revision": "abc", "date": "then", "rounds": 1}
    (tmp_path / "report.json").write_text(json.dumps({
        "command": "... --more --rounds 2", "rounds": 3, "git_revision": "def",
        "date": "later", "results": first, "earlier": [older],
        "systems": {"vllm": {"startup_s": [64.1]}}}))
    meta = {"systems": {"vllm": {}, "pdserve": {}}}
    rows, next_round = rounds.continue_report(tmp_path, meta)
    assert rows == first and next_round == 2
    assert meta["earlier"] == [older, {"command": "... --more --rounds 2",
                                       "git_revision": "def", "date": "later", "rounds": 2}]
    assert meta["systems"] == {"vllm": {"startup_s": [64.1]}, "pdserve": {"startup_s": []}}
