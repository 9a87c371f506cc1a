"""What one served model may say: its weights, vLLM engine args, pools, transfer and routing.

Engine options are vLLM's own argument names, passed through untouched (the one untyped dict,
which our code never reads by key); pool keys are Ray Serve's own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pdserve.deployments.config.base import StrictModel
from pdserve.deployments.config.planner import PlannerFloor
from pdserve.deployments.config.pools import Role
from pdserve.deployments.config.slo import SLOTargets


class PoolConfig(StrictModel):
    """One Ray Serve deployment of engine replicas; keys are Ray Serve's own."""

    num_replicas: int = Field(1, ge=0, description="Fixed replica count (ignored if autoscaling).")
    autoscaling_config: dict[str, Any] | None = Field(
        None, description="Ray Serve `autoscaling_config` for this pool, passed through."
    )
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0.5},
        description="Ray actor options per replica; `num_cpus` is checked against the cluster.",
    )
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="Ray Serve: at most this many replicas of the pool on one node "
        "(1 spreads the pool over hosts). With a custom resource in `ray_actor_options` "
        "(`resources: {host_a: 1}`), a pool is placed on the nodes that offer it.",
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Ray Serve max in-flight requests per replica."
    )
    max_queued_requests: int = Field(
        256, ge=-1, description="Ray Serve: requests each caller (ingress replica) may queue "
        "for this pool beyond its replicas' `max_ongoing_requests`; more get a retryable 503 "
        "at once (-1: no bound).",
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
    health_check_period_s: float = Field(
        10.0, gt=0, description="Ray Serve: how often each replica's health check runs (an "
        "engine found stalled fails it; Ray replaces a replica after 3 failures in a row).",
    )
    health_check_timeout_s: float = Field(
        120.0, gt=0, description="Ray Serve: how long one health check may take.",
    )
    cold_start_timeout_s: float = Field(
        300.0, gt=0,
        description="How long a request waits for a first replica when the pool is at zero "
        "(`min_replicas: 0`) before it fails with 503.",
    )

    @field_validator("max_queued_requests")
    @classmethod
    def _queue_bound(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (no bound) or at least 1 (Ray refuses 0)")
        return value

    @field_validator("autoscaling_config")
    @classmethod
    def _replica_bounds_are_counts(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """The bounds pdserve reads itself are counts (Ray validates the rest on deploy)."""
        for key in ("min_replicas", "initial_replicas", "max_replicas"):
            if key not in (value or {}):
                continue
            bound = value[key]  # type: ignore[index]
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
                raise ValueError(f"autoscaling_config.{key}: {bound!r} is not a count >= 0")
        low, high = (value or {}).get("min_replicas", 1), (value or {}).get("max_replicas")
        if high is not None and low > high:
            raise ValueError("autoscaling_config: min_replicas is above max_replicas")
        return value

    def max_replicas(self) -> int:
        """Upper bound of replicas this pool can reach (for the CPU budget check)."""
        if self.autoscaling_config:
            return int(self.autoscaling_config.get("max_replicas", self.num_replicas))
        return self.num_replicas

    def cpus_per_replica(self) -> float:
        return float(self.ray_actor_options.get("num_cpus", 1.0))


class KVTransferSettings(StrictModel):
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
        1000, ge=0, le=100_000,
        description="Microseconds the NIXL agent's progress thread sleeps between polls "
        "(pdserve's quiet connector). 0 is NIXL's own busy poll, which keeps a whole core busy "
        "per idle PD engine; transfers still progress when the engine checks them each step.",
    )
    kv_lease_s: int = Field(
        30, ge=6, le=3600,
        description="How long a prefill engine keeps a prompt's KV that no decoder pulls "
        "(vLLM's `kv_lease_duration`; decoders waiting to pull renew it). A decode that will "
        "not follow (replica lost) frees it at once; this bounds what nobody reports.",
    )
    pull_timeout_s: float = Field(
        30.0, gt=0,
        description="How long a decode engine may take from admitting a request with "
        "transfer params to its first token; past it the KV pull is taken for stuck and the "
        "decode engine prefills the prompt itself (the stuck request is aborted once its "
        "transfer ends, never mid-transfer).",
    )


class ResumeSettings(StrictModel):
    """What happens when a generating replica is lost mid-request."""

    max_attempts: int = Field(
        3, ge=0, le=16,
        description="How many times one request may be resumed on another replica (from "
        "what its client already received) before it fails with a retryable 503; 0 turns "
        "resuming off.",
    )


class HealthSettings(StrictModel):
    """How an engine replica notices that its engine stopped making progress."""

    stall_timeout_s: float = Field(
        30.0, gt=0,
        description="An engine with requests in flight that completes no step for this long "
        "is stalled: its streams are resumed on other replicas and its health check fails "
        "from then on, so Ray replaces the replica.",
    )
    caller_check_period_s: float = Field(
        2.0, gt=0,
        description="How often an engine replica checks that the ingress replicas it streams "
        "for still exist; the requests of one that died are aborted.",
    )


class RoutingConfig(StrictModel):
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


class ModelConfig(StrictModel):
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
    lora_modules: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters of this model (vLLM's "
        "`--lora-modules`): the name clients put in `model` -> the adapter (HF id, local "
        "directory, or `pdserve://tiny/<adapter>`). Every engine of the model's pools loads "
        "them; needs `enable_lora: true` (and vLLM's `max_loras`, `max_lora_rank`) in "
        "`engine_kwargs`.")
    max_output_tokens: int | None = Field(
        None, ge=1, description="Largest `max_tokens` (`max_completion_tokens`) a request may "
        "ask of this model (400 beyond); a request naming none gets this many at most.")
    enable_auto_tool_choice: bool = Field(
        False, description="vLLM's `--enable-auto-tool-choice`: with `tool_choice: auto` the "
        "model's own text is read for tool calls (needs `tool_call_parser`).")
    tool_call_parser: str | None = Field(
        None, description="vLLM's `--tool-call-parser` (`hermes`, `llama3_json`, `pythonic`, "
        "…): how tool calls are read out of the model's text.")
    reasoning_parser: str | None = Field(
        None, description="vLLM's `--reasoning-parser` (`deepseek_r1`, `qwen3`, …): splits "
        "the model's reasoning (`reasoning_content`) from its answer.")
    prefill: PoolConfig | None = Field(None, description="Prefill pool (mode `pd`).")
    decode: PoolConfig | None = Field(None, description="Decode pool (mode `pd`).")
    colocated: PoolConfig | None = Field(None, description="The single pool (mode `colocated`).")
    embed: PoolConfig | None = Field(None, description="The embedding pool (mode `embed`).")
    kv_transfer: KVTransferSettings = Field(default_factory=KVTransferSettings)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    resume: ResumeSettings = Field(default_factory=ResumeSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    slo: SLOTargets | None = Field(
        None,
        description="Autoscale this model's pools to these targets (each pool then needs "
        "`autoscaling_config` with `min_replicas`/`max_replicas`).",
    )
    planner: PlannerFloor | None = Field(
        None, description="The autoscaler's slow loop: keep each pool at least at what the "
        "profile says its observed load needs (needs `slo`).")

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
    def _auto_tools_have_a_parser(self) -> ModelConfig:
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError(f"model {self.model_id!r}: enable_auto_tool_choice needs "
                             "tool_call_parser (vLLM's name of the model's tool-call format)")
        return self

    @model_validator(mode="after")
    def _pools_match_mode(self) -> ModelConfig:
        allowed = {"pd": {"prefill", "decode"}, "colocated": {"colocated"}, "embed": {"embed"}}
        for role in ("prefill", "decode", "colocated", "embed"):
            if getattr(self, role) is not None and role not in allowed[self.mode]:
                raise ValueError(f"model {self.model_id!r}: `{role}` pool given in mode "
                                 f"`{self.mode}` (it takes {sorted(allowed[self.mode])})")
        if self.planner is not None and self.slo is None:
            raise ValueError(f"model {self.model_id!r}.planner: needs `slo` (the floor is "
                             "what one engine carries within the model's targets)")
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

    def serves_lora(self) -> bool:
        """Whether its engines take LoRA adapters (vLLM's `enable_lora`)."""
        return bool(self.engine_kwargs.get("enable_lora")) and self.mode != "embed"

    @model_validator(mode="after")
    def _adapters_have_an_engine(self) -> ModelConfig:
        if not self.lora_modules:
            return self
        where = f"model {self.model_id!r}.lora_modules"
        if self.mode == "embed":
            raise ValueError(f"{where}: LoRA adapters apply to generating models")
        if not self.serves_lora():
            raise ValueError(f"{where}: needs `enable_lora: true` in engine_kwargs (vLLM "
                             "reserves LoRA slots only when asked)")
        for name, path in self.lora_modules.items():
            if not name.strip() or not path.strip():
                raise ValueError(f"{where}: {name!r}: an adapter needs a name and a path")
            if name in self.names():
                raise ValueError(f"{where}: {name!r} is also a name of the model itself")
        return self

    def pools(self) -> dict[Role, PoolConfig]:
        """The pools this model runs, with defaults filled in, keyed by role."""
        if self.mode == "pd":
            return {"prefill": self.prefill or PoolConfig(), "decode": self.decode or PoolConfig()}
        if self.mode == "embed":
            return {"embed": self.embed or PoolConfig()}
        return {"colocated": self.colocated or PoolConfig()}

    def generates(self) -> bool:
        """Whether the model answers completions and chat (every mode but `embed`)."""
        return self.mode != "embed"
