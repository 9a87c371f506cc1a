"""App builders: validated config → a Ray Serve `Application` (the `import_path` of the YAMLs)."""

from __future__ import annotations

import copy
import importlib
import logging
from pathlib import Path
from typing import Any

import ray
from ray.serve.deployment import Application, Deployment

from pdserve.decode.server import ColocatedServer, DecodeServer
from pdserve.deployments.api.exposure import check_exposure, serve_http_host
from pdserve.deployments.api.ingress import OpenAIIngress
from pdserve.deployments.api.keys import KeyRing
from pdserve.deployments.config import (
    AppConfig,
    ModelConfig,
    PoolConfig,
    PoolName,
    Role,
    check_cpu_budget,
    engine_binding,
)
from pdserve.deployments.config.nodes import NodeResources, check_node_placement
from pdserve.deployments.config.ray_serve_env import RAY_SERVE_FAST_PATH_ENV
from pdserve.deployments.pipelines.embedding import EmbeddingServer
from pdserve.deployments.pipelines.retriever import PipelineRetriever
from pdserve.deployments.pipelines.stores import check_store_kind
from pdserve.prefill.server import PrefillServer
from pdserve.routing.router import hands_choices_by_request_id
from pdserve.routing.scorers import RouterSettings
from pdserve.simulation.profile_file import load as load_profile

logger = logging.getLogger(__name__)

POOL_CLASSES: dict[Role, Deployment] = {"prefill": PrefillServer, "decode": DecodeServer,
                                        "colocated": ColocatedServer, "embed": EmbeddingServer}

#: Router per role unless the pool's `request_router_config` names another.
DEFAULT_ROUTERS: dict[Role, str] = {
    "prefill": "pdserve.routing.router:PrefixAwareRouter",
    "colocated": "pdserve.routing.router:PrefixAwareRouter",
    "decode": "pdserve.routing.router:DecodeRouter",
}
#: Engines report their KV-event endpoint and load this often (Ray's default is 10 s).
ROUTING_STATS_PERIOD_S = 2.0
#: Ray's worker niceness (a RayConfig entry each worker reads from its environment at start).
NICENESS_ENV = "RAY_worker_niceness"


def with_env(ray_actor_options: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """`ray_actor_options` whose `runtime_env` sets `env`, keeping every value the options
    already set (a copy: the config's own dicts are untouched)."""
    options = copy.deepcopy(ray_actor_options)
    runtime_env = dict(options.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    for key, value in env.items():
        env_vars.setdefault(key, value)
    options["runtime_env"] = {**runtime_env, "env_vars": env_vars}
    return options


def worker_env(config: AppConfig) -> dict[str, str]:
    """What every pdserve deployment's processes get in their environment (the vLLM processes
    a replica starts inherit it): Ray's niceness, and Ray Serve's fast paths unless off."""
    env = {NICENESS_ENV: str(config.worker_niceness)}
    if config.ray_serve_fast_path:
        env.update(RAY_SERVE_FAST_PATH_ENV)
    return env


def router_config(role: Role, pool: PoolConfig, pool_name: str) -> dict[str, Any] | None:
    """Ray's `request_router_config` for a pool: ours by default, validated if it is ours.
    Embedding pools keep Ray's default (power of two choices): no prefix to reuse there."""
    if role not in DEFAULT_ROUTERS and not pool.request_router_config:
        return None
    config = {"request_router_class": DEFAULT_ROUTERS.get(role),
              "request_routing_stats_period_s": ROUTING_STATS_PERIOD_S,
              **(pool.request_router_config or {})}
    config = {key: value for key, value in config.items() if value is not None}
    router_class = config.get("request_router_class", "")
    if str(router_class).startswith("pdserve.routing."):
        try:
            RouterSettings.model_validate(config.get("request_router_kwargs") or {})
        except ValueError as exc:
            raise ValueError(
                f"{pool_name}.request_router_config.request_router_kwargs: {exc}"
            ) from exc
    else:
        warn_of_id_matching(pool_name, router_class)
    return config


def warn_of_id_matching(pool_name: str, router_class: Any) -> None:
    """A warning if a foreign router of this pool hands its choices out by request id only
    (`hands_choices_by_request_id`): a completion request with several prompts hangs there.
    A class that does not import is left to Ray, which names it."""
    if isinstance(router_class, str):
        module, _, name = router_class.replace(":", ".").rpartition(".")
        try:
            router_class = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            return
    if isinstance(router_class, type) and hands_choices_by_request_id(router_class):
        logger.warning(
            "%s.request_router_config: %s hands a chosen replica to the pending call with "
            "the same Ray request id, which the calls of one request share (Ray 2.60): a "
            "completion request with several prompts hangs on this pool. pdserve's routers "
            "and Ray's PowerOfTwoChoicesRequestRouter do not.", pool_name,
            router_class.__qualname__)


#: Per-deployment policy for autoscaled pools of a model with `slo` (the app-level
#: `SLOAutoscalingPolicy` in the YAML takes precedence over it; Ray logs that it does).
POOL_POLICY = "pdserve.deployments.autoscaling.policy:pool_policy"


def engine_user_config(config: AppConfig, model: ModelConfig) -> dict[str, Any]:
    """What engine replicas report to the autoscaler next to their signals; a `user_config`
    override of a pool deployment retunes it without restarting the engine."""
    return {"slo": model.slo.model_dump(mode="json") if model.slo else None,
            "replica_budget": config.replica_budget,
            "oversubscribe_cores": config.oversubscribe_cores,
            "fixed_engines": config.fixed_engines()}


def planner_profile(config: AppConfig, index: int) -> dict[str, Any] | None:
    """Model `index`'s `planner.profile`, read and validated now (a bad file fails the build
    naming the field); replicas get its contents."""
    planner = config.models[index].planner
    if planner is None:
        return None
    try:
        return load_profile(Path(planner.profile)).model_dump(mode="json")
    except (OSError, ValueError) as exc:
        raise ValueError(f"models[{index}].planner.profile: {exc}") from exc


def _autoscaling_config(pool: PoolConfig, model: ModelConfig) -> dict[str, Any]:
    autoscaling = dict(pool.autoscaling_config or {})
    if model.slo is not None:
        autoscaling.setdefault("policy", {"policy_function": POOL_POLICY})
    return autoscaling


def _pool_options(
    name: str, role: Role, pool: PoolConfig, model: ModelConfig, config: AppConfig
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": name,
        "ray_actor_options": with_env(pool.ray_actor_options, worker_env(config)),
        "max_ongoing_requests": pool.max_ongoing_requests,
        "max_queued_requests": pool.max_queued_requests,
        "health_check_period_s": pool.health_check_period_s,
        "health_check_timeout_s": pool.health_check_timeout_s,
        "graceful_shutdown_timeout_s": pool.graceful_shutdown_timeout_s,
        "user_config": engine_user_config(config, model),
    }
    if pool.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = pool.max_replicas_per_node
    routing = router_config(role, pool, name)
    if routing is not None:
        options["request_router_config"] = routing
    if pool.autoscaling_config:
        options["autoscaling_config"] = _autoscaling_config(pool, model)
    else:
        options["num_replicas"] = pool.num_replicas
    return options


def _check_cluster_cpus(config: AppConfig) -> None:
    if not ray.is_initialized():
        logger.info("Ray not initialised yet; CPU budget is checked when replicas are placed")
        return
    check_cpu_budget(config, ray.cluster_resources().get("CPU", 0.0))
    for problem in check_node_placement(config, NodeResources.alive(ray.nodes())):
        logger.warning("placement: %s (replicas wait until such a node joins; "
                       "`node_placement: strict` makes this an error)", problem)


def _check_exposure(config: AppConfig) -> None:
    """Fail the build, before any engine starts, if the server would be open to other
    machines; every ingress replica checks again on its own node (where it reads the keys)."""
    try:
        has_keys = KeyRing(config.auth).enabled
    except ValueError:  # e.g. the keys file lives only where the ingress runs: it decides
        return
    check_exposure(config.auth, has_keys, serve_http_host())


def check_chat_parsers(config: AppConfig) -> None:
    """Fail the build, naming the field, on a tool-call or reasoning parser vLLM lacks."""
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    for i, model in enumerate(config.models):
        for field, known in (("tool_call_parser", ToolParserManager.list_registered()),
                             ("reasoning_parser", ReasoningParserManager.list_registered())):
            name = getattr(model, field)
            if name is not None and name not in known:
                raise ValueError(f"models[{i}].{field}: vLLM has no parser {name!r}; "
                                 f"known: {', '.join(sorted(known))}")


def build_pd_app(config: AppConfig) -> Application:
    """Ingress + one Serve deployment per pool of every model (PD or colocated)."""
    _check_cluster_cpus(config)  # pdserve:// models are resolved on each replica's node
    _check_exposure(config)
    check_chat_parsers(config)
    pools: dict[str, dict[Role, Application]] = {}
    for i, model in enumerate(config.models):
        pools[model.model_id] = {}
        profile = planner_profile(config, i)
        for role, pool in model.pools().items():
            name = PoolName(model.model_id, role).deployment
            deployment = POOL_CLASSES[role].options(
                **_pool_options(name, role, pool, model, config))
            pools[model.model_id][role] = deployment.bind(
                engine_binding(config, model, role, profile))
    retrievers = {}
    for i, pipeline in enumerate(config.pipelines):
        try:
            check_store_kind(pipeline.store.kind)
        except ValueError as exc:
            raise ValueError(f"pipelines[{i}].store.kind: {exc}") from exc
        retriever = pipeline.retriever
        retrievers[pipeline.name] = PipelineRetriever.options(
            name=f"{pipeline.name}-retriever",
            num_replicas=retriever.num_replicas,
            ray_actor_options=with_env(retriever.ray_actor_options, worker_env(config)),
            max_ongoing_requests=retriever.max_ongoing_requests,
        ).bind(pipeline, pools[pipeline.embedding_model]["embed"])
    return ingress_app(config, pools, retrievers)


def ingress_app(config: AppConfig, pools: dict[str, dict[Role, Any]], retrievers: dict[str, Any],
                name: str = "ingress") -> Application:
    """The OpenAI ingress over `pools` and `retrievers`: bound deployments of the same app, or
    handles to those of a running one (a second front with other keys or limits)."""
    ingress = OpenAIIngress.options(
        name=name,
        num_replicas=config.ingress.num_replicas,
        ray_actor_options=with_env(config.ingress.ray_actor_options, worker_env(config)),
        max_ongoing_requests=config.ingress.max_ongoing_requests,
    )
    return ingress.bind(config, pools, retrievers)


def build_app(config: AppConfig | dict[str, Any]) -> Application:
    """Entry point named in `serve_configs/*.yaml` (`args` validated as an `AppConfig`) and
    pdserve's public builder in Python (`pdserve.build_app(AppConfig(...))`)."""
    if not isinstance(config, AppConfig):
        config = AppConfig.model_validate(config)
    return build_pd_app(config)
