"""App builders: validated config → a Ray Serve `Application` (the `import_path` of the YAMLs)."""

from __future__ import annotations

import logging
from typing import Any

import ray
from pdserve.decode.server import ColocatedServer, DecodeServer
from pdserve.deployments.config import AppConfig, PoolConfig, check_cpu_budget
from pdserve.deployments.ingress import OpenAIIngress
from pdserve.prefill.server import PrefillServer
from ray.serve.deployment import Application

logger = logging.getLogger(__name__)

POOL_CLASSES = {"prefill": PrefillServer, "decode": DecodeServer, "colocated": ColocatedServer}


def _pool_options(name: str, pool: PoolConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": name,
        "ray_actor_options": pool.ray_actor_options,
        "max_ongoing_requests": pool.max_ongoing_requests,
        "health_check_timeout_s": 120,
    }
    if pool.autoscaling_config:
        options["autoscaling_config"] = pool.autoscaling_config
    else:
        options["num_replicas"] = pool.num_replicas
    return options


def _check_cluster_cpus(config: AppConfig) -> None:
    if not ray.is_initialized():
        logger.info("Ray not initialised yet; CPU budget is checked when replicas are placed")
        return
    check_cpu_budget(config, ray.cluster_resources().get("CPU", 0.0))


def build_pd_app(config: AppConfig) -> Application:
    """Ingress + one Serve deployment per pool of every model (PD or colocated)."""
    _check_cluster_cpus(config)  # pdserve:// models are resolved on each replica's node
    config_dict = config.model_dump(mode="json")
    slots = config.pool_slots()
    pools: dict[str, dict[str, Application]] = {}
    for model in config.models:
        pools[model.model_id] = {}
        for role, pool in model.pools().items():
            deployment = POOL_CLASSES[role].options(
                **_pool_options(f"{model.model_id}-{role}", pool)
            )
            pool_index = slots.index((model.model_id, role))
            pools[model.model_id][role] = deployment.bind(config_dict, model.model_id, pool_index)
    ingress = OpenAIIngress.options(
        name="ingress",
        num_replicas=config.ingress.num_replicas,
        ray_actor_options=config.ingress.ray_actor_options,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
    )
    return ingress.bind(config_dict, pools)


def build_app(args: dict[str, Any]) -> Application:
    """Entry point named in `serve_configs/*.yaml`: validates `args` as an `AppConfig`."""
    return build_pd_app(AppConfig.model_validate(args))

