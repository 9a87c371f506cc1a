"""One request's path through the pools, ending on the decode pool: plain asyncio over injected
calls (no Serve import), run by the caller (the ingress), not by a decode replica.

PD: the plan decides remote or local prefill; remote prefills on the prefill pool (max_tokens=1,
KV kept), then decodes with the returned transfer params, so the decode engine pulls the KV.
A prefill that fails or misses its deadline falls back to a local prefill on the decode engine,
so the request still succeeds; each fallback is reported through `on_fallback`.
Colocated: one call to the single pool.

A generating replica lost mid-request (`ReplicaLost`) is not the client's problem: the request
continues on another replica from what the client already has (`resume.py`), planned afresh,
so a prefill replica that still caches the prompt computes only the delivered tokens and the
new decode replica pulls the KV. A loss after `max_resumes` resumes fails the request with a
retryable 503. A replica that is drained hands its requests off itself: their KV (prompt and
delivered tokens) waits on its engine, and the next attempt pulls it on another decode replica
instead of recomputing it (a drain's migrations, with their KV or recomputed where none can
move, do not count against `max_resumes`, nor does a replica being drained that turns a request
away before its first output: routers learn of a drain a stats period late; up to
`MAX_DRAIN_REFUSALS` such refusals per request). Every
engine request id carries a random suffix, so two client requests with the same id never
share one inside an engine (an abort of one would abort both).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace

from vllm.exceptions import RetryableRequestError
from vllm.inputs import EngineInput
from vllm.lora.request import LoRARequest
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

from pdserve import tracing
from pdserve.decode.request import DecodeRequest
from pdserve.decode.resume import (
    Detokenize,
    KVHandoff,
    NotResumable,
    Progress,
    ReplicaLost,
    extended_prompt_ids,
)
from pdserve.deployments.engine.callers import Caller
from pdserve.kv_transfer.params import KVTransferParams
from pdserve.prefill.request import PrefillRequest, PrefillResult
from pdserve.routing.plan import Plan
from pdserve.routing.types import RoutingInfo

logger = logging.getLogger(__name__)

PrefillCall = Callable[[PrefillRequest], Awaitable[PrefillResult]]
GenerateCall = Callable[[DecodeRequest], AsyncIterator[RequestOutput]]
ReleaseCall = Callable[[str, KVTransferParams], Awaitable[None]]
Planner = Callable[[RoutingInfo, str | None], Plan]
#: token ids, cache salt, LoRA adapter → block hashes (`routing/block_hashes.py`)
Hasher = Callable[[Sequence[int], str | None, LoRARequest | None], tuple[int, ...]]
#: How many replicas being drained may turn one request away before it fails (retryably).
MAX_DRAIN_REFUSALS = 8


@dataclass(frozen=True)
class Resume:
    """One resume of a request: why its replica was lost, the plan of the new attempt
    (`remote`, `local`, `colocated`) and the delivered tokens put back into its prompt."""

    reason: str
    path: str
    recomputed_tokens: int


def always_remote(info: RoutingInfo, forced_local: str | None) -> Plan:
    """The plan without pool data: remote unless the request itself needs a local prefill."""
    return Plan("local", forced_local) if forced_local else Plan("remote", "disaggregated")


@dataclass(frozen=True)
class PoolCalls:
    """The remote calls a model's orchestrator may make (Serve handles in production)."""

    generate: GenerateCall
    prefill: PrefillCall | None = None
    #: Frees a finished prefill's KV on its prefill engine when no decode will pull it.
    release_kv: ReleaseCall | None = None


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
        max_resumes: int = 0,
        hasher: Hasher | None = None,
        on_resume: Callable[[Resume], None] = lambda resume: None,
        on_resumed: Callable[[float], None] = lambda seconds: None,
        detokenize: Detokenize | None = None,
        caller: Caller | None = None,
    ) -> None:
        if disaggregated and calls.prefill is None:
            raise ValueError("PD mode needs a prefill call")
        self.calls = calls
        self.disaggregated = disaggregated
        self.prefill_timeout_s = prefill_timeout_s
        self.on_fallback = on_fallback
        self.planner = planner
        self.on_plan = on_plan
        self.max_resumes = max_resumes
        self.hasher = hasher
        self.on_resume = on_resume
        #: seconds from a loss to the next output a streaming client receives
        self.on_resumed = on_resumed
        self.detokenize = detokenize  # recovers text vLLM held back when resuming
        self._releases: set[asyncio.Task] = set()
        self.caller = caller  # this ingress replica: engines abort its requests if it dies

    async def generate(
        self,
        engine_input: EngineInput,
        params: SamplingParams,
        request_id: str,
        routing: RoutingInfo | None = None,
        prompt: str = "",
        trace_parent: tracing.Span | None = None,
        adapter: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """`trace_parent`: the span the request's prefill and decode calls are traced under
        (default: the current one); `adapter`: the LoRA adapter every engine call runs with."""
        routing = routing or RoutingInfo()
        progress = Progress(engine_input, params, request_id, prompt, self.detokenize)
        engine_request_id = f"{request_id}-{secrets.token_hex(4)}"
        attempt, losses, attempt_input, attempt_params = 0, 0, engine_input, params
        refusals = 0  # turned away by a replica being drained, before any output
        lost_at: float | None = None
        resumed: tuple[str, int] | None = None  # (reason, delivered tokens) of a pending resume
        handoff: KVHandoff | None = None  # KV a drained replica left for this attempt
        while True:
            attempt_id = engine_request_id if attempt == 0 else f"{engine_request_id}-r{attempt}"
            plan = self._plan(routing, attempt_params) if handoff is None else None
            if plan is not None:
                routing = replace(routing, plan=plan.kind)
            if resumed is not None:
                path = "handoff" if handoff else plan.kind if plan else "colocated"
                self.on_resume(Resume(resumed[0], path, resumed[1]))
                if trace_parent is not None:
                    trace_parent.add_event("pdserve.resume", {
                        "pdserve.resume.reason": resumed[0], "pdserve.resume.path": path,
                        "pdserve.resume.recomputed_tokens": resumed[1]})
                resumed = None
            answered = False  # this attempt gave an output
            try:
                async with aclosing(self._attempt(attempt_input, attempt_params, attempt_id,
                                                  routing, prompt, plan, handoff,
                                                  trace_parent, adapter)) as outputs:
                    async for output in outputs:
                        answered = True
                        if lost_at is not None:
                            self.on_resumed(time.perf_counter() - lost_at)
                            lost_at = None
                        yield progress.forward(output, attempt)
                return
            except ReplicaLost as lost:
                if progress.finished:
                    return
                attempt += 1
                drained = lost.reason == "draining"  # moved by a drain: not a loss
                refused = drained and lost.handoff is None and not answered
                refusals += refused
                losses += lost.handoff is None and not drained
                handoff = None
                if refusals > MAX_DRAIN_REFUSALS:
                    raise RetryableRequestError(
                        f"{refusals} replicas being drained turned this request away; "
                        "retry it") from None
                if losses > self.max_resumes:
                    logger.warning("request %s: %s; not resumed (%d resumes allowed)",
                                   request_id, lost, self.max_resumes)
                    raise RetryableRequestError(
                        "the replica serving this request was lost and the request could not "
                        "be resumed; retry it") from None
                try:
                    attempt_input, attempt_params, recomputed = progress.continuation()
                except NotResumable as why:
                    raise RetryableRequestError(
                        f"the replica serving this request was lost: {why}; retry it") from None
                if lost.handoff is not None:
                    handoff = self._usable(lost.handoff, attempt_input, attempt_id)
                    recomputed = handoff.recomputed if handoff else recomputed
                routing = self._rerouted(routing, attempt_input, adapter)
                if lost.replica is not None:
                    routing = replace(routing, avoid=(*routing.avoid, lost.replica))
                resumed = (lost.reason, recomputed)
                if params.output_kind != RequestOutputKind.FINAL_ONLY:  # a gap a client sees
                    lost_at = lost_at or time.perf_counter()  # from the first unbridged loss
                logger.warning("request %s: %s after %d delivered tokens; resuming (attempt %d)",
                               request_id, lost, recomputed, attempt)

    def _usable(self, handoff: KVHandoff, engine_input: EngineInput,
                request_id: str) -> KVHandoff | None:
        """The handoff, if its KV covers exactly the continuation's prompt; else release it
        (the continuation then runs as any resume)."""
        expected = len(extended_prompt_ids(engine_input))
        if handoff.tokens == expected and self.disaggregated:
            return handoff
        logger.warning("request %s: a handoff of %d tokens for a %d-token continuation; "
                       "recomputing instead", request_id, handoff.tokens, expected)
        self._release(request_id, handoff.kv_transfer_params)
        return None

    def _plan(self, routing: RoutingInfo, params: SamplingParams) -> Plan | None:
        if not self.disaggregated:
            return None
        plan = self.planner(routing, local_prefill_reason(params))
        self.on_plan(plan)
        return plan

    def _rerouted(self, routing: RoutingInfo, engine_input: EngineInput,
                  adapter: LoRARequest | None) -> RoutingInfo:
        """Routing data of a continuation: its prompt holds the delivered tokens too."""
        ids = extended_prompt_ids(engine_input)
        if self.hasher is None or len(ids) == routing.prompt_tokens:
            return routing
        salt = engine_input.get("cache_salt") if isinstance(engine_input, dict) else None
        return replace(routing, block_hashes=self.hasher(ids, salt, adapter),
                       prompt_tokens=len(ids))

    async def _attempt(
        self, engine_input: EngineInput, params: SamplingParams, request_id: str,
        routing: RoutingInfo, prompt: str, plan: Plan | None, handoff: KVHandoff | None = None,
        trace_parent: tracing.Span | None = None, adapter: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """One try: prefill remotely if planned (or pull what a drained replica handed off),
        then stream from a generating replica."""
        kv_params = handoff.kv_transfer_params if handoff is not None else None
        if plan is not None and plan.kind == "remote":
            kv_params = await self._remote_prefill(
                PrefillRequest(f"{request_id}-prefill", engine_input, params, routing, prompt,
                               adapter),
                trace_parent)
        decode = DecodeRequest(request_id, engine_input, params, kv_params, routing, prompt,
                               self.caller, adapter)
        span = tracing.start(
            "pdserve.decode" if self.disaggregated else "pdserve.generate_call", trace_parent,
            tracing.SpanKind.CLIENT, **{
                "pdserve.request_id": request_id,
                "pdserve.plan": "handoff" if handoff else plan.kind if plan else None,
                "pdserve.plan.reason": plan.reason if plan else None,
                "pdserve.kv_transfer.pull": kv_params is not None})
        pulled, error = False, None
        try:
            with tracing.current(span):  # the call carries the span to the replica
                outputs = self.calls.generate(decode)
            async with aclosing(outputs) as stream:
                async for output in stream:
                    if not pulled:
                        span.add_event(tracing.FIRST_OUTPUT_EVENT)
                    pulled = True
                    yield output
        except ReplicaLost as lost:
            error = lost
            # Streamed outputs start once the KV is pulled; a non-streamed one only at the end,
            # so there a loss says nothing about the pull, and releasing pulled (freed) blocks
            # makes the prefill engine log an error: the lease frees those instead.
            if kv_params is not None and not pulled and (
                    params.output_kind != RequestOutputKind.FINAL_ONLY):
                self._release(request_id, kv_params)
            raise
        except Exception as exc:
            error = exc
            raise
        finally:
            tracing.finish(span, error, **{
                "pdserve.replica_lost": error.reason if isinstance(error, ReplicaLost) else None})

    def _release(self, request_id: str, kv_params: KVTransferParams) -> None:
        """The decode replica that was to pull this prefill's KV is gone: free it now rather
        than when its lease runs out (in the background; the resume does not wait)."""
        if self.calls.release_kv is None:
            return

        async def release() -> None:
            try:
                await self.calls.release_kv(f"{request_id}-release", kv_params)
            except Exception as exc:  # the lease still frees it
                logger.warning("request %s: could not release its prefill KV (%s)",
                               request_id, exc)

        task = asyncio.create_task(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _remote_prefill(self, request: PrefillRequest,
                              trace_parent: tracing.Span | None = None,
                              ) -> KVTransferParams | None:
        """KV-transfer params from a prefill replica, or None (then decode prefills locally)."""
        assert self.calls.prefill is not None
        request_id = request.request_id.removesuffix("-prefill")
        span = tracing.start("pdserve.prefill", trace_parent, tracing.SpanKind.CLIENT,
                             **{"pdserve.request_id": request.request_id})
        outcome, error = "cancelled", None
        try:
            with tracing.current(span):  # the call carries the span to the replica
                pending = self.calls.prefill(request)
            result = await asyncio.wait_for(pending, self.prefill_timeout_s)
            outcome = "ok"
        except TimeoutError as exc:
            outcome, error = "timeout", exc
            logger.warning("request %s: prefill timed out; decoding locally", request_id)
            self.on_fallback("timeout")
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome, error = "error", exc
            logger.warning("request %s: prefill failed (%s); decoding locally", request_id, exc)
            self.on_fallback("error")
            return None
        finally:
            # a fallback is the request's path, not its failure: the span says which it took
            tracing.finish(span, error, **{"pdserve.prefill.outcome": outcome})
        return result.kv_transfer_params
