"""Typed messages between the ingress and the engine pools (no dicts across layers).

Prompts travel already rendered and tokenized (vLLM's `EngineInput`), together with the
`SamplingParams` vLLM's own OpenAI layer built, so engines never re-tokenize. Outputs travel
back as vLLM's `RequestOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vllm.sampling_params import SamplingParams


@dataclass(frozen=True)
class RoutingInfo:
    """What the routers read: the prompt's block hashes (computed once, at the ingress)."""

    block_hashes: tuple[int, ...] = ()
    prompt_tokens: int = 0
    session_id: str | None = None
    plan: Literal["remote", "local", "colocated"] = "colocated"


@dataclass(frozen=True)
class PrefillRequest:
    """Compute the prompt's KV on a prefill engine and keep it for one remote decoder."""

    request_id: str
    engine_input: Any  # vllm.inputs.EngineInput (a TypedDict: prompt_token_ids, ...)
    sampling_params: SamplingParams
    routing: RoutingInfo = field(default_factory=RoutingInfo)
    prompt: str = ""  # prompt text, for text-based routers (Ray's PrefixCacheAffinityRouter)


@dataclass(frozen=True)
class PrefillResult:
    """What decode needs to pull the KV: the params vLLM's connector returned."""

    request_id: str
    kv_transfer_params: dict[str, Any]
    prompt_tokens: int


@dataclass(frozen=True)
class DecodeRequest:
    """Generate on a decode engine; with `kv_transfer_params` it pulls the prompt's KV first.

    Without them (fallback or colocated) the engine prefills the prompt itself.
    """

    request_id: str
    engine_input: Any
    sampling_params: SamplingParams
    kv_transfer_params: dict[str, Any] | None = None
    routing: RoutingInfo = field(default_factory=RoutingInfo)
    prompt: str = ""
