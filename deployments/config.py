"""Validated application config: what `serve_configs/*.yaml` may say, and nothing else.

Every model is frozen and forbids unknown keys, so a typo fails at start-up with a message
that names the field. Engine options are vLLM's own argument names, passed through untouched
(the one untyped dict, which our code never reads by key).
"""

from __future__ import annotations

from typing import Any, Literal

from pdserve.deployments.pipeline_config import (
    ChunkingConfig,
    PipelineConfig,
    RetrieverConfig,
    VectorStoreConfig,
    _Strict,
    qdrant_local_dir,
)
from pdserve.kv_transfer.nixl import DEFAULT_PROGRESS_DELAY_US
from pydantic import Field, model_validator

__all__ = ["AppConfig", "ChunkingConfig", "ModelConfig", "PipelineConfig", "PoolConfig",
           "RetrieverConfig", "SLOTargets", "VectorStoreConfig", "check_cpu_budget"]


class PoolConfig(_Strict):
    """One Ray Serve deployment of engine replicas; keys are Ray Serve's own."""

    num_replicas: int = Field(1, ge=0, description="Fixed replica count (ignored if autoscaling).")
    autoscaling_config: dict[str, Any] | None = Field(
        None, description="Ray Serve `autoscaling_config` for this pool, passed through."
    )
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0.5},
        description="Ray actor options per replica; `num_cpus` is checked against the cluster.",
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Ray Serve max in-flight requests per replica."
    )
    request_router_config: dict[str, Any] | None = Field(
        None,
        description="Ray Serve `request_router_config` (its own keys). Default: pdserve's "
        "`PrefixAwareRouter` for prefill/colocated pools, `DecodeRouter` for decode pools.",
    )
    graceful_shutdown_timeout_s: float = Field(
        600.0, ge=0,
        description="Ray Serve: how long a replica being removed (scale-down, redeploy) keeps "
        "serving its in-flight requests and streams before it is stopped.",
    )
    cold_start_timeout_s: float = Field(
        300.0, gt=0,
        description="How long a request waits for a first replica when the pool is at zero "
        "(`min_replicas: 0`) before it fails with 503.",
    )

    def max_replicas(self) -> int:
        """Upper bound of replicas this pool can reach (for the CPU budget check)."""
        if self.autoscaling_config:
            return int(self.autoscaling_config.get("max_replicas", self.num_replicas))
        return self.num_replicas

    def cpus_per_replica(self) -> float:
        return float(self.ray_actor_options.get("num_cpus", 1.0))


class KVTransferSettings(_Strict):
    """How KV moves from prefill to decode engines (vLLM's KV-connector API)."""

    connector: Literal["NixlConnector"] = Field(
        "NixlConnector", description="vLLM KV connector; NIXL is the supported transport."
    )
    kv_buffer_device: Literal["cpu", "cuda"] = Field(
        "cpu", description="Where NIXL stages KV: `cpu` on CPU-only hosts, `cuda` on GPUs."
    )
    prefill_timeout_s: float = Field(
        30.0, gt=0, description="Prefill call deadline; past it the decode engine prefills."
    )
    side_channel_base_port: int = Field(
        20000, ge=1024, le=60000, description="First NIXL side-channel port on each host."
    )
    progress_thread_delay_us: int = Field(
        DEFAULT_PROGRESS_DELAY_US, ge=0, le=100_000,
        description="Microseconds the NIXL agent's progress thread sleeps between polls "
        "(pdserve's quiet connector). 0 is NIXL's own busy poll, which keeps a whole core busy "
        "per idle PD engine; transfers still progress when the engine checks them each step.",
    )


class RoutingConfig(_Strict):
    """Prefix-aware routing inputs and the PD plan (remote vs local prefill) of one model."""

    kv_events: bool = Field(
        True, description="Engines publish KV events so routers know which blocks they hold."
    )
    local_prefill_below_tokens: int = Field(
        128, ge=0,
        description="PD: prefill on the decode replica when fewer prompt tokens than this are "
        "uncached there (0: always remote).",
    )
    max_prefill_queue_per_replica: float = Field(
        8.0, gt=0,
        description="PD: prefill locally when more prefills than this per prefill replica are "
        "in flight.",
    )
    session_header: str = Field(
        "x-session-id", description="Request header whose value pins a session's turns."
    )


class SLOTargets(_Strict):
    """A model's latency targets and the pressure limits its pools are scaled to.

    Prefill and colocated pools answer for TTFT and queued prefill tokens, decode and colocated
    pools for ITL and KV-cache usage. Replicas report these targets with their signals, so an
    operator retunes them with a Ray Serve `user_config` override (no engine restart).
    """

    ttft_ms: float = Field(2000.0, gt=0, description="Target time to first token (ms).")
    itl_ms: float = Field(200.0, gt=0, description="Target inter-token latency (ms).")
    percentile: float = Field(
        90.0, gt=0, le=100, description="The latency percentile held to the targets."
    )
    max_queued_prefill_tokens: int = Field(
        4096, ge=1,
        description="Prompt tokens waiting for their first token, per replica, above which "
        "the prefill (or colocated) pool grows even before TTFT shows it.",
    )
    max_kv_cache_usage: float = Field(
        0.85, gt=0, le=1, description="KV-cache usage per decode replica above which it grows."
    )
    scale_down_below: float = Field(
        0.6, gt=0, lt=1,
        description="Hysteresis: a pool shrinks only if, with one replica fewer, its busiest "
        "signal would still be below this fraction of its target.",
    )
    min_prefill_decode_ratio: float | None = Field(
        None, gt=0, description="PD: lower bound of prefill replicas / decode replicas."
    )
    max_prefill_decode_ratio: float | None = Field(
        None, gt=0, description="PD: upper bound of prefill replicas / decode replicas."
    )
    window_s: float = Field(
        30.0, gt=0, description="Replicas compute latency percentiles over this window."
    )
    warmup_requests: int = Field(
        2, ge=0, description="A new replica's first requests (compile, cold caches) are not "
        "sampled; until then the policy ignores its latencies.",
    )

    @model_validator(mode="after")
    def _ratio_bounds_ordered(self) -> SLOTargets:
        low, high = self.min_prefill_decode_ratio, self.max_prefill_decode_ratio
        if low is not None and high is not None and low > high:
            raise ValueError("min_prefill_decode_ratio must not exceed max_prefill_decode_ratio")
        return self


class ModelConfig(_Strict):
    """One served model: its weights, vLLM engine args, and its pools."""

    model_id: str = Field(..., min_length=1, description="Name clients put in `model`.")
    served_model_name: list[str] = Field(
        default_factory=list, description="Aliases clients may also put in `model`."
    )
    model: str = Field(
        ..., min_length=1, description="HF model id, local path, or `pdserve://tiny`."
    )
    mode: Literal["pd", "colocated", "embed"] = Field(
        "pd", description="`pd`: separate prefill and decode pools; `colocated`: one pool; "
        "`embed`: one pool of a pooling (embedding) model, served on `/v1/embeddings`."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments (its own names), passed through."
    )
    prefill: PoolConfig | None = Field(None, description="Prefill pool (mode `pd`).")
    decode: PoolConfig | None = Field(None, description="Decode pool (mode `pd`).")
    colocated: PoolConfig | None = Field(None, description="The single pool (mode `colocated`).")
    embed: PoolConfig | None = Field(None, description="The embedding pool (mode `embed`).")
    kv_transfer: KVTransferSettings = Field(default_factory=KVTransferSettings)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    slo: SLOTargets | None = Field(
        None,
        description="Autoscale this model's pools to these targets (each pool then needs "
        "`autoscaling_config` with `min_replicas`/`max_replicas`).",
    )

    def names(self) -> list[str]:
        """Every name clients may use for this model: its id first, then its aliases."""
        return [self.model_id, *(n for n in self.served_model_name if n != self.model_id)]

    @model_validator(mode="after")
    def _autoscaled_pools_have_bounds(self) -> ModelConfig:
        for role, pool in self.pools().items():
            where = f"model {self.model_id!r}: {role}.autoscaling_config"
            if self.slo is not None and pool.autoscaling_config is None:
                raise ValueError(f"{where}: required when `slo` is set (min/max_replicas)")
            minimum = int((pool.autoscaling_config or {}).get("min_replicas", 1))
            if role != "colocated" and minimum < 1:
                raise ValueError(f"{where}.min_replicas: 0 is only allowed for colocated "
                                 "pools (a PD model needs both pools up)")
        return self

    @model_validator(mode="after")
    def _pools_match_mode(self) -> ModelConfig:
        allowed = {"pd": {"prefill", "decode"}, "colocated": {"colocated"}, "embed": {"embed"}}
        for role in ("prefill", "decode", "colocated", "embed"):
            if getattr(self, role) is not None and role not in allowed[self.mode]:
                raise ValueError(f"model {self.model_id!r}: `{role}` pool given in mode "
                                 f"`{self.mode}` (it takes {sorted(allowed[self.mode])})")
        if self.mode == "embed" and self.slo is not None:
            raise ValueError(f"model {self.model_id!r}.slo: latency targets apply to "
                             "generating models, not `embed` pools")
        reserved = {"model", "kv_transfer_config", "kv_events_config"}
        clash = reserved & set(self.engine_kwargs)
        if clash:
            raise ValueError(
                f"model {self.model_id!r}: engine_kwargs may not set {sorted(clash)} "
                "(pdserve sets them per pool)"
            )
        return self

    def pools(self) -> dict[str, PoolConfig]:
        """The pools this model runs, with defaults filled in, keyed by role."""
        if self.mode == "pd":
            return {"prefill": self.prefill or PoolConfig(), "decode": self.decode or PoolConfig()}
        if self.mode == "embed":
            return {"embed": self.embed or PoolConfig()}
        return {"colocated": self.colocated or PoolConfig()}

    def generates(self) -> bool:
        """Whether the model answers completions and chat (every mode but `embed`)."""
        return self.mode != "embed"


class IngressConfig(_Strict):
    """The OpenAI HTTP front: tokenization, chat templates, orchestration."""

    num_replicas: int = Field(1, ge=1, description="Ingress replicas.")
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0}, description="Ray actor options per replica."
    )
    max_ongoing_requests: int = Field(256, ge=1, description="In-flight requests per replica.")


class TestingConfig(_Strict):
    """Config-gated fault injection; off unless a test config turns it on."""

    fault_injection: bool = Field(
        False,
        description="Honour `vllm_xargs` keys `pdserve_fail_prefill` / `pdserve_prefill_delay_s`.",
    )


class AppConfig(_Strict):
    """The whole application: `args:` of `pdserve.deployments.app:build_app`."""

    models: list[ModelConfig] = Field(..., min_length=1, description="Models served.")
    pipelines: list[PipelineConfig] = Field(
        default_factory=list, description="RAG pipelines, each served as a model of its own."
    )
    ingress: IngressConfig = Field(default_factory=IngressConfig)
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
    testing: TestingConfig = Field(default_factory=TestingConfig)
    replica_budget: int | None = Field(
        None, ge=1,
        description="Engine replicas all autoscaled pools may hold together; shared by "
        "pdserve's app-level policy: each pool's minimum first, then the largest SLO deficit.",
    )

    @model_validator(mode="after")
    def _unique_model_ids(self) -> AppConfig:
        names = [name for m in self.models for name in m.names()]
        names += [p.name for p in self.pipelines]
        dupes = sorted({i for i in names if names.count(i) > 1})
        if dupes:
            raise ValueError(f"models: model_id/served_model_name/pipeline name used twice: "
                             f"{dupes}")
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
    def _budget_covers_minimums(self) -> AppConfig:
        if self.replica_budget is None:
            return self
        minimum = sum(
            int(p.autoscaling_config.get("min_replicas", 1)) if p.autoscaling_config
            else p.num_replicas
            for m in self.models for p in m.pools().values()
        )
        if minimum > self.replica_budget:
            raise ValueError(f"replica_budget: {self.replica_budget} is less than the pools' "
                             f"minimum replicas together ({minimum})")
        return self

    def pool_slots(self) -> list[tuple[str, str]]:
        """(model_id, role) for every pool, in a fixed order: the pool index used for ports."""
        return [(m.model_id, role) for m in self.models for role in m.pools()]

    def cpu_demand(self) -> float:
        """CPUs Ray must reserve when every pool is at its maximum size."""
        pools = [p for m in self.models for p in m.pools().values()]
        engines = sum(p.max_replicas() * p.cpus_per_replica() for p in pools)
        if self.replica_budget is not None:  # the policy never holds more than the budget
            engines = min(engines, self.replica_budget * max(p.cpus_per_replica() for p in pools))
        ingress_cpus = float(self.ingress.ray_actor_options.get("num_cpus", 0))
        ingress = self.ingress.num_replicas * ingress_cpus
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
