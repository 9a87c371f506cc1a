"""A model's latency targets and pressure limits, which its pools are autoscaled to."""

from __future__ import annotations

from pydantic import Field, model_validator

from pdserve.deployments.config.base import StrictModel


class SLOTargets(StrictModel):
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
