"""Validated application config: what `serve_configs/*.yaml` may say, and nothing else.

Every model is frozen and forbids unknown keys, so a typo fails at start-up with a message
that names the field. Engine options are vLLM's own argument names, passed through untouched
(the one untyped dict, which our code never reads by key).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class ModelConfig(_Strict):
    """One served model: its weights, vLLM engine args, and its pools."""

    model_id: str = Field(..., min_length=1, description="Name clients put in `model`.")
    model: str = Field(
        ..., min_length=1, description="HF model id, local path, or `pdserve://tiny`."
    )
    mode: Literal["pd", "colocated"] = Field(
        "pd", description="`pd`: separate prefill and decode pools; `colocated`: one pool."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments (its own names), passed through."
    )
    prefill: PoolConfig | None = Field(None, description="Prefill pool (mode `pd`).")
    decode: PoolConfig | None = Field(None, description="Decode pool (mode `pd`).")
    colocated: PoolConfig | None = Field(None, description="The single pool (mode `colocated`).")
    kv_transfer: KVTransferSettings = Field(default_factory=KVTransferSettings)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)

    @model_validator(mode="after")
    def _pools_match_mode(self) -> ModelConfig:
        if self.mode == "pd" and self.colocated is not None:
            raise ValueError(f"model {self.model_id!r}: `colocated` pool given in mode `pd`")
        if self.mode == "colocated" and (self.prefill or self.decode):
            raise ValueError(
                f"model {self.model_id!r}: `prefill`/`decode` pools given in mode `colocated`"
            )
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
        return {"colocated": self.colocated or PoolConfig()}


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
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    cpu_binding: Literal["auto", "nobind"] = Field(
        "auto", description="`auto`: pin each engine's OpenMP threads to its own core(s)."
    )
    testing: TestingConfig = Field(default_factory=TestingConfig)

    @model_validator(mode="after")
    def _unique_model_ids(self) -> AppConfig:
        ids = [m.model_id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"models: duplicate model_id {dupes}")
        return self

    def pool_slots(self) -> list[tuple[str, str]]:
        """(model_id, role) for every pool, in a fixed order: the pool index used for ports."""
        return [(m.model_id, role) for m in self.models for role in m.pools()]

    def cpu_demand(self) -> float:
        """CPUs Ray must reserve when every pool is at its maximum size."""
        engines = sum(
            p.max_replicas() * p.cpus_per_replica() for m in self.models for p in m.pools().values()
        )
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
