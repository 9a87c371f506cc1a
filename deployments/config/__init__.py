"""Validated application config: what `serve_configs/*.yaml` may say, and nothing else.

One module per idea (the app, a model and its pools, SLO targets, RAG pipelines, pool names,
a replica's binding); this package re-exports the types callers use.
"""

from pdserve.deployments.config.app import (
    AppConfig,
    IngressConfig,
    TestingConfig,
    check_cpu_budget,
)
from pdserve.deployments.config.binding import EngineBinding, engine_binding
from pdserve.deployments.config.models import (
    KVTransferSettings,
    ModelConfig,
    PoolConfig,
    RoutingConfig,
)
from pdserve.deployments.config.pipeline import (
    ChunkingConfig,
    PipelineConfig,
    RetrieverConfig,
    VectorStoreConfig,
)
from pdserve.deployments.config.pools import ROLES, PoolName, Role
from pdserve.deployments.config.security import AuthConfig, LimitsConfig
from pdserve.deployments.config.slo import SLOTargets

__all__ = ["ROLES", "AppConfig", "AuthConfig", "ChunkingConfig", "EngineBinding",
           "IngressConfig", "KVTransferSettings", "LimitsConfig", "ModelConfig", "PipelineConfig",
           "PoolConfig", "PoolName", "RetrieverConfig", "Role", "RoutingConfig", "SLOTargets",
           "TestingConfig", "VectorStoreConfig", "check_cpu_budget", "engine_binding"]
