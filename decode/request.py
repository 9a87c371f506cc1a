"""The decode call: generate on a decode (or colocated) engine, pulling the prompt's KV first
when the request carries the prefill's transfer params."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.inputs import EngineInput
from vllm.lora.request import LoRARequest
from vllm.sampling_params import SamplingParams

from pdserve.deployments.engine.callers import Caller
from pdserve.kv_transfer.params import KV_PARAMS_KEY, KVTransferParams, without_transfer_params
from pdserve.routing.types import RoutingInfo


@dataclass(frozen=True)
class DecodeRequest:
    """Generate tokens; with `kv_transfer_params` the engine pulls the prompt's KV over NIXL
    first, without them (fallback, local prefill, colocated) it prefills the prompt itself."""

    request_id: str
    engine_input: EngineInput
    sampling_params: SamplingParams
    kv_transfer_params: KVTransferParams | None = None
    routing: RoutingInfo = field(default_factory=RoutingInfo)
    prompt: str = ""
    #: the ingress replica streaming it (the engine aborts the request if that one dies)
    caller: Caller | None = None
    #: the LoRA adapter it runs with (the prefill that made its KV ran with the same)
    lora_request: LoRARequest | None = None

    def engine_params(self) -> SamplingParams:
        """The sampling params the engine runs: the client's, with this request's transfer
        params (and no others: only pdserve's orchestrator sets them)."""
        params = self.sampling_params.clone()
        extra = without_transfer_params(params.extra_args)
        if self.kv_transfer_params is not None:
            extra[KV_PARAMS_KEY] = self.kv_transfer_params
        params.extra_args = extra or None
        return params
