"""AppConfig validation: bad config fails at start-up with a message naming the field."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from pdserve.deployments.config import AppConfig, ModelConfig, PoolConfig, check_cpu_budget


def app_args(**model_overrides: object) -> dict:
    model = {"model_id": "tiny", "model": "pdserve://tiny", "mode": "pd"} | model_overrides
    return {"models": [model]}


def test_minimal_pd_config_gets_stated_defaults() -> None:
    config = AppConfig.model_validate(app_args())
    pools = config.models[0].pools()
    assert set(pools) == {"prefill", "decode"}
    assert pools["prefill"].num_replicas == 1
    assert pools["decode"].ray_actor_options == {"num_cpus": 0.5}
    assert config.models[0].kv_transfer.kv_buffer_device == "cpu"
    assert config.models[0].kv_transfer.progress_thread_delay_us == 1000
    assert config.worker_niceness == 0


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (app_args(engine_kwrags={}), "engine_kwrags"),
        (app_args(mode="split"), "mode"),
        (app_args(prefill={"num_replica": 2}), "num_replica"),
        (app_args(prefill={"num_replicas": -1}), "num_replicas"),
        (app_args(kv_transfer={"prefill_timeout_s": 0}), "prefill_timeout_s"),
        (app_args(kv_transfer={"connector": "Carrier"}), "connector"),
        (app_args(kv_transfer={"progress_thread_delay_us": -1}), "progress_thread_delay_us"),
        (app_args(kv_transfer={"progress_thread_delay_us": 10**6}),
         "progress_thread_delay_us"),
        (app_args(kv_transfer={"progress_thread_delay_us": "soon"}),
         "progress_thread_delay_us"),
        (app_args() | {"worker_niceness": -5}, "worker_niceness"),
        (app_args() | {"worker_niceness": 20}, "worker_niceness"),
        ({"models": []}, "models"),
        ({"models": [{"model": "x"}]}, "model_id"),
        (app_args() | {"ingres": {}}, "ingres"),
    ],
)
def test_bad_config_names_the_field(args: dict, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        AppConfig.model_validate(args)
    assert field in str(error.value)


def test_pools_must_match_mode() -> None:
    with pytest.raises(ValidationError, match="`colocated` pool given in mode `pd`"):
        AppConfig.model_validate(app_args(colocated={"num_replicas": 1}))
    with pytest.raises(ValidationError, match="`prefill` pool given in mode `colocated`"):
        AppConfig.model_validate(app_args(mode="colocated", prefill={"num_replicas": 1}))
    with pytest.raises(ValidationError, match="`decode` pool given in mode `embed`"):
        AppConfig.model_validate(app_args(mode="embed", decode={"num_replicas": 1}))


def test_engine_kwargs_may_not_override_what_pdserve_sets_per_pool() -> None:
    with pytest.raises(ValidationError, match="kv_transfer_config"):
        AppConfig.model_validate(app_args(engine_kwargs={"kv_transfer_config": {}}))


def test_duplicate_model_ids_are_rejected() -> None:
    model = {"model_id": "a", "model": "m"}
    with pytest.raises(ValidationError, match="used twice: \\['a'\\]"):
        AppConfig.model_validate({"models": [model, model]})
    alias_clash = {"model_id": "b", "model": "m", "served_model_name": ["a"]}
    with pytest.raises(ValidationError, match="used twice"):
        AppConfig.model_validate({"models": [model, alias_clash]})


LORA = {"enable_lora": True, "max_lora_rank": 32}


def test_lora_adapters_are_named_models_of_an_engine_that_enables_lora() -> None:
    config = AppConfig.model_validate(app_args(engine_kwargs=LORA,
                                               lora_modules={"sql": "/adapters/sql"}))
    assert config.models[0].lora_modules == {"sql": "/adapters/sql"}
    with pytest.raises(ValidationError, match="lora_modules: needs `enable_lora: true`"):
        AppConfig.model_validate(app_args(lora_modules={"sql": "/adapters/sql"}))
    with pytest.raises(ValidationError, match="'tiny' is also a name of the model"):
        AppConfig.model_validate(app_args(engine_kwargs=LORA, lora_modules={"tiny": "/a"}))
    with pytest.raises(ValidationError, match="an adapter needs a name and a path"):
        AppConfig.model_validate(app_args(engine_kwargs=LORA, lora_modules={"sql": " "}))
    with pytest.raises(ValidationError, match="apply to generating models"):
        AppConfig.model_validate(app_args(mode="embed", engine_kwargs=LORA,
                                          lora_modules={"sql": "/a"}))
    other = {"model_id": "other", "model": "m", "engine_kwargs": LORA,
             "lora_modules": {"sql": "/b"}}
    with pytest.raises(ValidationError, match="used twice: \\['sql'\\]"):
        AppConfig.model_validate({"models": [app_args(engine_kwargs=LORA, lora_modules={
            "sql": "/a"})["models"][0], other]})


AUTOSCALED = {"min_replicas": 1, "max_replicas": 2}


def test_aliases_follow_the_model_id() -> None:
    model = ModelConfig(model_id="a", model="m", served_model_name=["x", "a", "y"])
    assert model.names() == ["a", "x", "y"]


def test_slo_needs_bounds_on_every_pool_and_names_the_pool() -> None:
    with pytest.raises(ValidationError, match="decode.autoscaling_config: required"):
        ModelConfig.model_validate({"model_id": "a", "model": "m", "slo": {},
                                    "prefill": {"autoscaling_config": AUTOSCALED}})
    ok = ModelConfig.model_validate({"model_id": "a", "model": "m", "slo": {"ttft_ms": 300},
                                     "prefill": {"autoscaling_config": AUTOSCALED},
                                     "decode": {"autoscaling_config": AUTOSCALED}})
    assert ok.slo is not None and ok.slo.ttft_ms == 300 and ok.slo.percentile == 90


@pytest.mark.parametrize(
    ("slo", "field"),
    [({"ttft_ms": 0}, "ttft_ms"), ({"percentile": 101}, "percentile"),
     ({"scale_down_below": 1.0}, "scale_down_below"), ({"ttft": 5}, "ttft"),
     ({"min_prefill_decode_ratio": 2, "max_prefill_decode_ratio": 1}, "min_prefill_decode_ratio")],
)
def test_bad_slo_targets_name_the_field(slo: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ModelConfig.model_validate({"model_id": "a", "model": "m", "mode": "colocated",
                                    "slo": slo, "colocated": {"autoscaling_config": AUTOSCALED}})


def test_scale_to_zero_only_for_colocated_pools() -> None:
    zero = {"min_replicas": 0, "max_replicas": 1}
    ModelConfig.model_validate({"model_id": "a", "model": "m", "mode": "colocated",
                                "colocated": {"autoscaling_config": zero}})
    with pytest.raises(ValidationError, match="prefill.autoscaling_config.min_replicas"):
        ModelConfig.model_validate({"model_id": "a", "model": "m",
                                    "prefill": {"autoscaling_config": zero}})


def test_replica_budget_must_cover_minimums_and_caps_cpu_demand() -> None:
    pools = {"prefill": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}},
             "decode": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}}
    with pytest.raises(ValidationError, match="replica_budget"):
        AppConfig.model_validate({"models": [{"model_id": "a", "model": "m", **pools}],
                                  "replica_budget": 1})
    config = AppConfig.model_validate({"models": [{"model_id": "a", "model": "m", **pools}],
                                       "replica_budget": 4})
    assert config.cpu_demand() == 2.0  # 4 x 0.5, not 6 x 0.5


def test_config_is_frozen() -> None:
    config = AppConfig.model_validate(app_args())
    with pytest.raises(ValidationError):
        config.models[0].mode = "colocated"  # type: ignore[misc]


def test_cpu_demand_counts_autoscaling_maximum() -> None:
    config = AppConfig.model_validate(
        app_args(
            prefill={"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}},
            decode={"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.25}},
        )
    )
    assert config.cpu_demand() == pytest.approx(3 * 0.5 + 2 * 0.25)


def test_cpu_budget_error_names_the_field_and_the_pools() -> None:
    config = AppConfig.model_validate(app_args(decode={"num_replicas": 4}))
    check_cpu_budget(config, available_cpus=2.5)
    with pytest.raises(ValueError, match=r"num_cpus.*need 2.5 CPUs.*Ray has 2 .*tiny/decode: 4"):
        check_cpu_budget(config, available_cpus=2.0)


def test_shipped_serve_configs_validate() -> None:
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "serve_configs"
    files = sorted(root.glob("*.yaml"))
    assert files, "no serve configs found"
    for path in files:
        for application in yaml.safe_load(path.read_text())["applications"]:
            AppConfig.model_validate(application["args"])


def test_pools_get_pdserve_routers_by_role_unless_configured() -> None:
    from pdserve.deployments.app import router_config

    assert router_config("prefill", PoolConfig(), "m-prefill")["request_router_class"].endswith(
        "PrefixAwareRouter")
    assert router_config("decode", PoolConfig(), "m-decode")["request_router_class"].endswith(
        "DecodeRouter")
    ray_default = "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter"
    custom = PoolConfig(request_router_config={"request_router_class": ray_default})
    config = router_config("colocated", custom, "m-colocated")
    assert config["request_router_class"] == ray_default
    assert config["request_routing_stats_period_s"] == 2.0


def test_a_router_that_matches_calls_by_request_id_is_warned_of() -> None:
    """Ray Serve LLM's router (no `FIFOMixin`) hangs a completion with several prompts: its
    pool is named at start-up; pdserve's routers and Ray's default are not warned of. (A
    handler of our own: importing Ray Serve LLM reconfigures logging, dropping pytest's.)"""
    from pdserve.deployments.app import logger, router_config

    class Records(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    def warned(router_class: str) -> bool:
        records = Records()
        logger.addHandler(records)
        try:
            pool = PoolConfig(request_router_config={"request_router_class": router_class})
            router_config("colocated", pool, "m-colocated")
        finally:
            logger.removeHandler(records)
        return any("several prompts hangs" in m and "m-colocated" in m
                   for m in records.messages)

    assert warned("ray.serve.llm.request_router:PrefixCacheAffinityRouter")
    assert not warned("ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter")
    assert not warned("pdserve.routing.router:PrefixAwareRouter")
    assert not warned("no.such.module:Router")  # left to Ray, which names it


def test_bad_router_kwargs_fail_at_start_up_naming_the_pool_and_field() -> None:
    from pdserve.deployments.app import router_config

    pool = PoolConfig(request_router_config={
        "request_router_class": "pdserve.routing.router:PrefixAwareRouter",
        "request_router_kwargs": {"weights": {"prefx": 1.0}}})
    field = r"(?s)m-prefill\.request_router_config\.request_router_kwargs.*prefx"
    with pytest.raises(ValueError, match=field):
        router_config("prefill", pool, "m-prefill")


def test_routing_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="local_prefill_below_tokens"):
        ModelConfig(model_id="m", model="x", routing={"local_prefill_below_tokens": -1})
    with pytest.raises(ValueError, match="max_prefill_queue_per_replica"):
        ModelConfig(model_id="m", model="x", routing={"max_prefill_queue_per_replica": 0})


def rag_args(**pipeline: object) -> dict:
    return {"models": [{"model_id": "llm", "model": "pdserve://tiny"},
                       {"model_id": "emb", "model": "pdserve://all-minilm-l6-v2",
                        "mode": "embed"}],
            "pipelines": [{"name": "docs", "embedding_model": "emb", "llm": "llm", **pipeline}]}


def test_a_pipeline_gets_stated_defaults_and_an_embedding_pool() -> None:
    config = AppConfig.model_validate(rag_args())
    (pipeline,) = config.pipelines
    assert (pipeline.store.kind, pipeline.top_k, pipeline.ordering) == ("lancedb", 5, "canonical")
    assert [(p.model, p.role) for p in config.pool_names()] == [
        ("llm", "prefill"), ("llm", "decode"), ("emb", "embed")]
    assert not config.models[1].generates()


@pytest.mark.parametrize(("pipeline", "field"), [
    ({"embedding_model": "llm"}, r"pipelines\[0\]\.embedding_model: 'llm' is not a model with "
                                 r"mode `embed` \(those are: \['emb'\]\)"),
    ({"llm": "emb"}, r"pipelines\[0\]\.llm: 'emb' is not a generating model"),
    ({"ordering": "random"}, r"pipelines\.0\.ordering"),
    ({"top_k": 0}, r"pipelines\.0\.top_k"),
    ({"chunking": {"max_words": 50, "overlap_words": 50}}, "overlap_words must be smaller"),
    ({"chunk_template": "{txt}"}, r"chunk_template: KeyError\('txt'\)"),
    ({"store": {"kind": "lancedb", "url": "x"}}, r"pipelines\.0\.store\.url"),
    ({"name": "org/docs"}, r"pipelines\.0\.name"),
    ({"retriever": {"num_replicas": 0}}, r"pipelines\.0\.retriever\.num_replicas"),
    ({"retriever": {"autoscaling_config": {}}}, r"pipelines\.0\.retriever\.autoscaling_config"),
    ({"store": {"kind": "qdrant", "uri": "/tmp/q"}, "retriever": {"num_replicas": 2}},
     r"retriever\.num_replicas: qdrant's local mode"),
])
def test_bad_pipeline_config_names_the_field(pipeline: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        AppConfig.model_validate(rag_args(**pipeline))


def test_two_pipelines_cannot_share_a_qdrant_local_directory() -> None:
    args = rag_args(store={"kind": "qdrant", "uri": "/tmp/q"})
    args["pipelines"].append({**args["pipelines"][0], "name": "docs2"})
    with pytest.raises(ValidationError, match=r"pipelines\[1\]\.store\.uri: '/tmp/q'"):
        AppConfig.model_validate(args)
    args["pipelines"][1]["store"] = {"kind": "qdrant", "uri": "http://qdrant:6333"}
    AppConfig.model_validate(args)


def test_pipeline_names_share_the_model_namespace() -> None:
    args = rag_args(name="llm")
    with pytest.raises(ValidationError, match=r"used twice: \['llm'\]"):
        AppConfig.model_validate(args)


def test_unknown_store_kind_fails_the_build_listing_known_stores() -> None:
    from pdserve.deployments.app import build_app

    with pytest.raises(ValueError, match=r"pipelines\[0\]\.store\.kind: unknown vector store "
                                         r"'milvus'; known: lancedb, qdrant"):
        build_app(rag_args(store={"kind": "milvus"}))


def test_embedding_pools_keep_rays_default_router() -> None:
    from pdserve.deployments.app import router_config

    assert router_config("embed", PoolConfig(), "emb-embed") is None


def test_every_deployment_runs_at_the_configured_niceness_unless_it_sets_its_own() -> None:
    from pdserve.deployments.app import NICENESS_ENV, with_env

    mine = {"num_cpus": 0.5, "runtime_env": {"env_vars": {"A": "1"}, "pip": ["x"]}}
    options = with_env(mine, {NICENESS_ENV: "0"})
    assert options["runtime_env"] == {"env_vars": {"A": "1", NICENESS_ENV: "0"}, "pip": ["x"]}
    assert mine["runtime_env"]["env_vars"] == {"A": "1"}  # the config's dict is untouched
    own = {"runtime_env": {"env_vars": {NICENESS_ENV: "10"}}}
    assert with_env(own, {NICENESS_ENV: "0"})["runtime_env"]["env_vars"][NICENESS_ENV] == "10"
    assert with_env({}, {NICENESS_ENV: "5"}) == {"runtime_env": {"env_vars": {NICENESS_ENV: "5"}}}


def test_every_deployment_gets_ray_serves_fast_paths_unless_the_app_turns_them_off() -> None:
    from ray.serve.deployment import Application

    from pdserve.deployments.app import NICENESS_ENV, build_app
    from pdserve.deployments.config.ray_serve_env import (
        RAY_SERVE_FAST_PATH_ENV,
        RAY_SERVE_HAPROXY_ENV,
    )

    def envs(args: dict) -> dict[str, dict[str, str]]:
        app = build_app(args)
        found: dict[str, dict[str, str]] = {}
        pending = [app]
        while pending:  # the ingress and every deployment bound into it (nested in dicts)
            node = pending.pop()
            if isinstance(node, dict):
                pending += node.values()
                continue
            if not isinstance(node, Application):
                continue
            deployment = node._bound_deployment
            found[deployment.name] = deployment.ray_actor_options["runtime_env"]["env_vars"]
            pending += deployment.init_args
        return found

    on = envs(app_args())
    assert set(on) == {"ingress", "tiny-prefill", "tiny-decode"}
    for env in on.values():
        assert env[NICENESS_ENV] == "0" and RAY_SERVE_FAST_PATH_ENV.items() <= env.items()
        # Ray-start-only flags (HAProxy mode) would make an ingress replica disagree with the
        # controller about who listens on the HTTP port
        assert not set(RAY_SERVE_HAPROXY_ENV) & set(env), env
    off = envs(app_args() | {"ray_serve_fast_path": False})
    assert all(not set(RAY_SERVE_FAST_PATH_ENV) & set(env) for env in off.values())


def test_tool_and_reasoning_parsers_by_vllms_names() -> None:
    from pdserve.deployments.app import check_chat_parsers

    model = app_args()["models"][0]
    with pytest.raises(ValidationError, match="enable_auto_tool_choice needs tool_call_parser"):
        AppConfig.model_validate({"models": [{**model, "enable_auto_tool_choice": True}]})
    good = AppConfig.model_validate({"models": [{
        **model, "enable_auto_tool_choice": True, "tool_call_parser": "hermes",
        "reasoning_parser": "deepseek_r1"}]})
    check_chat_parsers(good)  # vLLM's own registry knows both
    for field in ("tool_call_parser", "reasoning_parser"):
        bad = AppConfig.model_validate({"models": [{**model, field: "no-such-parser"}]})
        with pytest.raises(ValueError, match=rf"models\[0\]\.{field}: vLLM has no parser "
                                             r"'no-such-parser'; known: .*"):
            check_chat_parsers(bad)
