"""One request's path through the pools, ending on the decode pool: plain asyncio over injected
calls (no Serve import), run by the caller (the ingress), not by a decode replica.

PD: the plan decides remote or local prefill; remote prefills on the prefill pool (max_tokens=1,
KV kept), then decodes with the returned transfer params, so the decode engine pulls the KV.
A prefill that fails or misses its deadline falls back to a local prefill on the decode engine,
so the request still succeeds; each fallback is reported through `on_fallback`.
Colocated: one call to the single pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace

from vllm.inputs import EngineInput
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

from pdserve.decode.request import DecodeRequest
from pdserve.kv_transfer.params import KVTransferParams
from pdserve.prefill.request import PrefillRequest, PrefillResult
from pdserve.routing.plan import Plan
from pdserve.routing.types import RoutingInfo

logger = logging.getLogger(__name__)

PrefillCall = Callable[[PrefillRequest], Awaitable[PrefillResult]]
GenerateCall = Callable[[DecodeRequest], AsyncIterator[RequestOutput]]
Planner = Callable[[RoutingInfo, str | None], Plan]


def always_remote(info: RoutingInfo, forced_local: str | None) -> Plan:
    """The plan without pool data: remote unless the request itself needs a local prefill."""
    return Plan("local", forced_local) if forced_local else Plan("remote", "disaggregated")


@dataclass(frozen=True)
class PoolCalls:
    """The remote calls a model's orchestrator may make (Serve handles in production)."""

    generate: GenerateCall
    prefill: PrefillCall | None = None


def local_prefill_reason(params: SamplingParams) -> str | None:
    """Why a request must prefill on the decode engine, or None if remote prefill works.

    Parallel samples (n > 1) would make several decoders pull one transfer, and prompt
    logprobs need the prompt computed where they are reported.
    """
    if params.n > 1:
        return "n>1"
    if params.prompt_logprobs is not None:
        return "prompt_logprobs"
    return None


class Orchestrator:
    """Runs one model's requests through its pools."""

    def __init__(
        self,
        calls: PoolCalls,
        *,
        disaggregated: bool,
        prefill_timeout_s: float,
        on_fallback: Callable[[str], None] = lambda reason: None,
        planner: Planner = always_remote,
        on_plan: Callable[[Plan], None] = lambda plan: None,
    ) -> None:
        if disaggregated and calls.prefill is None:
            raise ValueError("PD mode needs a prefill call")
        self.calls = calls
        self.disaggregated = disaggregated
        self.prefill_timeout_s = prefill_timeout_s
        self.on_fallback = on_fallback
        self.planner = planner
        self.on_plan = on_plan

    async def generate(
        self,
        engine_input: EngineInput,
        params: SamplingParams,
        request_id: str,
        routing: RoutingInfo | None = None,
        prompt: str = "",
    ) -> AsyncIterator[RequestOutput]:
        routing = routing or RoutingInfo()
        kv_params: KVTransferParams | None = None
        if self.disaggregated:
            plan = self.planner(routing, local_prefill_reason(params))
            self.on_plan(plan)
            routing = replace(routing, plan=plan.kind)
            if plan.kind == "remote":
                kv_params = await self._remote_prefill(
                    PrefillRequest(f"{request_id}-prefill", engine_input, params, routing, prompt)
                )
        decode = DecodeRequest(request_id, engine_input, params, kv_params, routing, prompt)
        async with aclosing(self.calls.generate(decode)) as stream:
            async for output in stream:
                yield output

    async def _remote_prefill(self, request: PrefillRequest) -> KVTransferParams | None:
        """KV-transfer params from a prefill replica, or None (then decode prefills locally)."""
        assert self.calls.prefill is not None
        request_id = request.request_id.removesuffix("-prefill")
        try:
            result = await asyncio.wait_for(self.calls.prefill(request), self.prefill_timeout_s)
        except TimeoutError:
            logger.warning("request %s: prefill timed out; decoding locally", request_id)
            self.on_fallback("timeout")
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("request %s: prefill failed (%s); decoding locally", request_id, exc)
            self.on_fallback("error")
            return None
        return result.kv_transfer_params
