"""The prefill deployment: runs the prompt once and hands its KV to a remote decoder."""

from __future__ import annotations

import asyncio
import logging

from pdserve.deployments.engine import EngineHost
from pdserve.deployments.messages import PrefillRequest, PrefillResult
from pdserve.kv_transfer.params import (
    KV_PARAMS_KEY,
    is_pull_ready,
    remote_decode_request,
    without_transfer_params,
)
from ray import serve
from vllm.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger(__name__)


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


@serve.deployment
class PrefillServer(EngineHost):
    role = "prefill"

    async def prefill(self, request: PrefillRequest) -> PrefillResult:
        await self._maybe_inject_fault(request)
        final = None
        signals = self.track(request)  # this call's latency is the prefill pool's TTFT
        try:
            async for output in self.engine.generate(
                request.engine_input, prefill_params(request.sampling_params), request.request_id
            ):
                signals.on_output(sum(len(o.token_ids) for o in output.outputs))
                final = output
        finally:
            signals.finish()
        params = final.kv_transfer_params if final is not None else None
        if not is_pull_ready(params):
            raise PrefillFailed(f"request {request.request_id}: no KV-transfer params: {params}")
        return PrefillResult(
            request_id=request.request_id,
            kv_transfer_params=params,
            prompt_tokens=len(final.prompt_token_ids or []),
        )

    async def _maybe_inject_fault(self, request: PrefillRequest) -> None:
        """Config-gated test hook: fail or stall this prefill when the request asks to."""
        if not self.fault_injection:
            return
        extra = request.sampling_params.extra_args or {}
        if delay := float(extra.get("pdserve_prefill_delay_s", 0)):
            logger.warning("request %s: injected prefill delay %.1fs", request.request_id, delay)
            await asyncio.sleep(delay)
        if extra.get("pdserve_fail_prefill"):
            raise PrefillFailed(f"request {request.request_id}: injected prefill failure")
