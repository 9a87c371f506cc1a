"""The whole application: `args:` of `pdserve.deployments.app:build_app`, validated at start-up.

Every model is frozen and forbids unknown keys, so a typo fails with a message that names the
field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pdserve.deployments.config.base import StrictModel
from pdserve.deployments.config.models import ModelConfig
from pdserve.deployments.config.pipeline import PipelineConfig, qdrant_local_dir
from pdserve.deployments.config.pools import PoolName
from pdserve.deployments.config.security import AuthConfig, LimitsConfig


class IngressConfig(StrictModel):
    """The OpenAI HTTP front: tokenization, chat templates, orchestration."""

    num_replicas: int = Field(1, ge=1, description="Ingress replicas.")
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0}, description="Ray actor options per replica."
    )
    max_ongoing_requests: int = Field(256, ge=1, description="In-flight requests per replica.")

    def cpus_per_replica(self) -> float:
        return float(self.ray_actor_options.get("num_cpus", 0))


class TestingConfig(StrictModel):
    """Config-gated fault injection; off unless a test config turns it on."""

    fault_injection: bool = Field(
        False,
        description="Honour `vllm_xargs` keys `pdserve_fail_prefill` / `pdserve_prefill_delay_s`.",
    )


class AppConfig(StrictModel):
    """The whole application: `args:` of `pdserve.deployments.app:build_app`."""

    models: list[ModelConfig] = Field(..., min_length=1, description="Models served.")
    pipelines: list[PipelineConfig] = Field(
        default_factory=list, description="RAG pipelines, each served as a model of its own."
    )
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys (see README).")
    limits: LimitsConfig = Field(default_factory=LimitsConfig,
                                 description="Request sizes refused at the ingress.")
    cpu_binding: Literal["auto", "nobind"] = Field(
        "auto", description="`auto`: pin each engine's OpenMP threads to its own core(s)."
    )
    worker_niceness: int = Field(
        0, ge=0, le=19,
        description="Ray's `worker_niceness` for every process pdserve deploys (ingress, pools "
        "and their vLLM engines, retrievers), set as `RAY_worker_niceness` in each "
        "deployment's `runtime_env`. Ray's own default is 15, which puts the serving path "
        "below any other process on the host. A deployment whose `ray_actor_options` set it "
        "keeps its own value.",
    )
    ray_serve_fast_path: bool = Field(
        True,
        description="Set Ray Serve's fast-path flags (`RAY_SERVE_FAST_PATH_ENV`: gRPC between "
        "deployments, user code and handle routers on each replica's main loop, buffered "
        "access logs) in every deployment's `runtime_env`; a flag a deployment sets itself "
        "is kept. Ray's proxy reads them from the environment Ray starts in.",
    )
    node_placement: Literal["warn", "strict"] = Field(
        "warn",
        description="What to do at start-up when the Ray nodes alive then cannot hold a pool "
        "as its `ray_actor_options`/`max_replicas_per_node` ask (no node offers a custom "
        "resource, too few hosts, too many CPUs tied to one host): `warn` logs it (nodes may "
        "still join: KubeRay, Anyscale, an autoscaler); `strict` fails the build naming the "
        "field (a static cluster, where Ray would leave the replicas pending forever).",
    )
    testing: TestingConfig = Field(default_factory=TestingConfig)
    oversubscribe_cores: bool = Field(
        False,
        description="Let pdserve's autoscaling policy add a CPU engine to nodes whose cores "
        "are all bound to engines already (it then shares a core: more replicas, no more "
        "compute). Off, such a scale-out is skipped and reported (`no_physical_capacity`); "
        "GPU engines are placed by Ray's `num_gpus` either way.",
    )
    replica_budget: int | None = Field(
        None, ge=1,
        description="Engine replicas all autoscaled pools may hold together; shared by "
        "pdserve's app-level policy: each pool's minimum first, then the largest SLO deficit.",
    )

    @model_validator(mode="after")
    def _unique_model_ids(self) -> AppConfig:
        names = [name for m in self.models for name in [*m.names(), *m.lora_modules]]
        names += [p.name for p in self.pipelines]
        dupes = sorted({i for i in names if names.count(i) > 1})
        if dupes:
            raise ValueError(f"models: model_id/served_model_name/lora_modules/pipeline name "
                             f"used twice: {dupes}")
        return self

    @model_validator(mode="after")
    def _pipelines_name_models(self) -> AppConfig:
        by_id = {m.model_id: m for m in self.models}
        for i, pipeline in enumerate(self.pipelines):
            embedder = by_id.get(pipeline.embedding_model)
            if embedder is None or embedder.mode != "embed":
                known = sorted(m.model_id for m in self.models if m.mode == "embed")
                raise ValueError(f"pipelines[{i}].embedding_model: {pipeline.embedding_model!r} "
                                 f"is not a model with mode `embed` (those are: {known})")
            local = qdrant_local_dir(pipeline.store)
            if local and any(qdrant_local_dir(p.store) == local for p in self.pipelines[:i]):
                raise ValueError(f"pipelines[{i}].store.uri: {local!r} is already another "
                                 "pipeline's qdrant local-mode directory (one process each)")
            llm = by_id.get(pipeline.llm)
            if llm is None or not llm.generates():
                known = sorted(m.model_id for m in self.models if m.generates())
                raise ValueError(f"pipelines[{i}].llm: {pipeline.llm!r} is not a generating "
                                 f"model (those are: {known})")
        return self

    @model_validator(mode="after")
    def _admission_below_ray_queue(self) -> AppConfig:
        limit = self.limits.max_concurrent_requests
        if limit is not None and limit >= self.ingress.max_ongoing_requests:
            raise ValueError(f"limits.max_concurrent_requests: {limit} must be below "
                             f"ingress.max_ongoing_requests ({self.ingress.max_ongoing_requests}"
                             "), or Ray's proxy queues what pdserve should refuse")
        return self

    def concurrent_requests_limit(self) -> int:
        """Requests one ingress replica admits at once (`limits.max_concurrent_requests`)."""
        return (self.limits.max_concurrent_requests
                or max(1, self.ingress.max_ongoing_requests * 3 // 4))

    def fixed_engines(self) -> int:
        """Engines of pools with a fixed replica count (Ray's autoscaling policies see no
        context of them: the app-level policy learns of them from the others' reports)."""
        return sum(p.num_replicas for m in self.models for p in m.pools().values()
                   if not p.autoscaling_config)

    def minimum_replicas(self) -> int:
        """Engine replicas every pool of every model holds at least (fixed counts, or an
        autoscaled pool's `min_replicas`)."""
        return sum(
            int(p.autoscaling_config.get("min_replicas", 1)) if p.autoscaling_config
            else p.num_replicas
            for m in self.models for p in m.pools().values()
        )

    @model_validator(mode="after")
    def _budget_covers_minimums(self) -> AppConfig:
        if self.replica_budget is None:
            return self
        minimum = self.minimum_replicas()
        if minimum > self.replica_budget:
            raise ValueError(f"replica_budget: {self.replica_budget} is less than the pools' "
                             f"minimum replicas together ({minimum})")
        return self

    def pool_names(self) -> list[PoolName]:
        """Every pool, in a fixed order: a pool's position is its index for ports and cores."""
        return [PoolName(m.model_id, role) for m in self.models for role in m.pools()]

    def cpu_demand(self) -> float:
        """CPUs Ray must reserve when every pool is at its maximum size."""
        pools = [p for m in self.models for p in m.pools().values()]
        engines = sum(p.max_replicas() * p.cpus_per_replica() for p in pools)
        if self.replica_budget is not None:  # the policy never holds more than the budget
            engines = min(engines, self.replica_budget * max(p.cpus_per_replica() for p in pools))
        ingress = self.ingress.num_replicas * self.ingress.cpus_per_replica()
        return engines + ingress


def check_cpu_budget(config: AppConfig, available_cpus: float) -> None:
    """Fail at start-up, not by waiting forever, when the pools cannot all be placed."""
    demand = config.cpu_demand()
    if demand > available_cpus + 1e-9:
        detail = ", ".join(
            f"{m.model_id}/{role}: {p.max_replicas()} x {p.cpus_per_replica()}"
            for m in config.models
            for role, p in m.pools().items()
        )
        raise ValueError(
            f"ray_actor_options.num_cpus: the pools need {demand:g} CPUs at their maximum size "
            f"but Ray has {available_cpus:g} ({detail}); lower num_cpus per replica "
            "(e.g. 0.25) or the replica counts"
        )
