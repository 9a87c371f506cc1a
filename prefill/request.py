"""The prefill call: what the ingress sends a prefill replica, and what comes back.

Prompts travel already rendered and tokenized (vLLM's `EngineInput`), with the
`SamplingParams` vLLM's own OpenAI layer built, so engines never re-tokenize. The prefill engine
runs the prompt once (`prefill_params`) and keeps its KV for one remote decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.inputs import EngineInput
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, SamplingParams

from pdserve.kv_transfer.params import (
    KV_PARAMS_KEY,
    KVTransferParams,
    remote_decode_request,
    without_transfer_params,
)
from pdserve.routing.types import RoutingInfo


@dataclass(frozen=True)
class PrefillRequest:
    """Compute the prompt's KV on a prefill engine and keep it for one remote decoder."""

    request_id: str
    engine_input: EngineInput
    sampling_params: SamplingParams  # the client's; the engine runs `prefill_params` of it
    routing: RoutingInfo = field(default_factory=RoutingInfo)
    prompt: str = ""  # prompt text, for text-based routers (Ray's PrefixCacheAffinityRouter)
    lora_request: LoRARequest | None = None  # the LoRA adapter the prompt's KV is computed with


@dataclass(frozen=True)
class PrefillResult:
    """What decode needs to pull the KV: the params vLLM's connector returned."""

    request_id: str
    kv_transfer_params: KVTransferParams
    prompt_tokens: int


class PrefillFailed(RuntimeError):
    """The prefill engine did not return usable KV-transfer params."""


def prefill_params(request_params: SamplingParams) -> SamplingParams:
    """One token, KV kept for a remote decoder; no sampling work the decoder would redo."""
    extra = without_transfer_params(request_params.extra_args)
    return SamplingParams(
        max_tokens=1,
        output_kind=RequestOutputKind.FINAL_ONLY,
        extra_args={**extra, KV_PARAMS_KEY: remote_decode_request()},
    )
