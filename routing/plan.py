"""The PD plan: prefill this request on the prefill pool (remote) or on its decode replica
(local), decided per request from pool-level data before any call is made.

Disaggregation pays a transfer and an extra hop to keep long prefills off the decode engines.
It is not worth it when little of the prompt is uncached where decode would run, and it
hurts when the prefill pool is already backed up. Pure logic, unit-tested at its thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PlanKind = Literal["remote", "local"]


@dataclass(frozen=True)
class Plan:
    kind: PlanKind
    reason: str


@dataclass(frozen=True)
class PlanInputs:
    """What the ingress knows at decision time."""

    prompt_tokens: int
    block_size: int
    decode_hit_blocks: int  # longest cached prefix on any decode replica (index)
    prefill_in_flight: int  # prefill calls this ingress has outstanding
    prefill_replicas: int


@dataclass(frozen=True)
class PlanThresholds:
    local_prefill_below_tokens: int
    max_prefill_queue_per_replica: float


def decide(inputs: PlanInputs, thresholds: PlanThresholds, forced_local: str | None) -> Plan:
    """Remote unless a rule says local; the reason is what the metrics count.

    - `forced_local`: the request itself needs a local prefill (n > 1, prompt logprobs).
    - uncached tokens (prompt minus the best decode replica's cached prefix) below
      `local_prefill_below_tokens`: computing them in place is cheaper than a transfer.
    - more than `max_prefill_queue_per_replica` prefills in flight per prefill replica.
    """
    if forced_local:
        return Plan("local", forced_local)
    if inputs.prefill_replicas == 0:
        return Plan("local", "no_prefill_replica")
    cached = min(inputs.decode_hit_blocks * inputs.block_size, inputs.prompt_tokens)
    if inputs.prompt_tokens - cached < thresholds.local_prefill_below_tokens:
        return Plan("local", "short_uncached")
    if inputs.prefill_in_flight / inputs.prefill_replicas > (
        thresholds.max_prefill_queue_per_replica
    ):
        return Plan("local", "prefill_queue")
    return Plan("remote", "disaggregated")
