"""The prefill deployment: runs the prompt once and hands its KV to a remote decoder."""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from pdserve import tracing
from pdserve.deployments.engine.host import EngineHost, engine_timings
from pdserve.kv_transfer.params import is_pull_ready, offered_blocks
from pdserve.prefill.request import PrefillFailed, PrefillRequest, PrefillResult, prefill_params

logger = logging.getLogger(__name__)


@serve.deployment
class PrefillServer(EngineHost):
    role = "prefill"

    async def prefill(self, request: PrefillRequest) -> PrefillResult:
        await self._maybe_inject_fault(request)
        final, error = None, None
        signals = self.track(request.routing)  # this call's latency is the prefill pool's TTFT
        span = self.span("pdserve.prefill.engine", **{"pdserve.request_id": request.request_id})
        try:
            async for output in self.engine.generate(
                request.engine_input, prefill_params(request.sampling_params), request.request_id,
                lora_request=request.lora_request, trace_headers=self.trace_headers(span),
            ):
                signals.on_output(sum(len(o.token_ids) for o in output.outputs))
                final = output
        except Exception as exc:
            error = exc
            raise
        finally:
            signals.finish()
            blocks = offered_blocks(final.kv_transfer_params) if final is not None else 0
            tracing.finish(span, error, **{
                "gen_ai.usage.input_tokens": len(final.prompt_token_ids or []) if final else None,
                "pdserve.cached_tokens": final.num_cached_tokens if final else None,
                "pdserve.kv_transfer.blocks": blocks,
                "pdserve.kv_transfer.bytes": blocks * self.kv_block_bytes,
                **engine_timings(final)})
        params = final.kv_transfer_params if final is not None else None
        if final is None or not is_pull_ready(params):
            raise PrefillFailed(f"request {request.request_id}: no KV-transfer params: {params}")
        return PrefillResult(
            request_id=request.request_id,
            kv_transfer_params=params,  # type: ignore[arg-type]
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
