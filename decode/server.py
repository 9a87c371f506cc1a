"""Decode and colocated deployments: generate tokens, pulling transferred KV when given.

A generating replica can be drained (`drain`): it turns new requests away and ends each live
stream after the last output its caller received, so the caller continues it on another replica
(`decode/orchestrator.py`). A decode engine first hands the stream's KV off: it runs the
prompt and the delivered tokens as a prefill request of its own, which its prefix cache
answers for every full block (vLLM caches a running request's blocks, generated tokens
included), so it computes at most one block, and keeps that KV for the next replica to pull
over NIXL; only then is the original request aborted. A colocated engine has no KV connector:
its streams continue elsewhere by recomputing (as after a crash).

A replica drains itself when Ray Serve starts stopping it (`stopping.py`), and then keeps its
engine until the next replicas have pulled the KV it handed off (`__del__`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from functools import partial
from typing import Any

from ray import serve
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.exceptions import EngineDeadError

from pdserve import tracing
from pdserve.decode.request import DecodeRequest
from pdserve.decode.resume import KVHandoff, ReplicaLost, extended_prompt_ids
from pdserve.decode.stopping import wait_until_removed
from pdserve.deployments.engine.host import EngineHost, engine_timings, pool_counter
from pdserve.kv_transfer.params import KVTransferParams, is_pull_ready, offered_blocks
from pdserve.prefill.request import prefill_params
from pdserve.routing.pool_state import pool_state

logger = logging.getLogger(__name__)

#: How long `drain` waits for the streams that cannot move (non-streamed, n > 1, structured
#: output) to finish here, unless the caller says otherwise.
DRAIN_TIMEOUT_S = 120.0
#: How often a replica looks for itself in its pool's running set.
STOP_CHECK_PERIOD_S = 0.5
#: How long a stopping replica that handed KV off waits for it to be pulled before its engine
#: shuts down (the pullers fall back to recomputing after that).
HANDOFF_PULL_WAIT_S = 30.0


def movable(params: SamplingParams) -> bool:
    """Whether a stream can continue on another replica from what its caller received: one
    sequence, streamed, no grammar state (the orchestrator's `Progress.continuation`)."""
    return (params.n == 1 and params.output_kind != RequestOutputKind.FINAL_ONLY
            and params.structured_outputs is None)


class GeneratingHost(EngineHost):
    """An engine host that generates: the decode and colocated pools."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handoffs = {"kv": 0, "recompute": 0}  # streams handed off, by how they continue
        self.handoff_recomputed = 0  # tokens this engine computed to hand KV off (vLLM's count)
        self._watching_stop: asyncio.Task | None = None
        tags = self.pool_tags
        self._pull_timeouts = pool_counter(
            "pdserve_kv_pull_timeouts_total",
            "KV pulls that gave no token within pull_timeout_s (then prefilled locally).", tags)
        self._migrations = pool_counter(
            "pdserve_migrations_total",
            "Streams a drain moved off this replica, by how they continue: `kv` (their KV "
            "handed off) or `recompute`.", tags, "how")
        self._handoff_recomputed = pool_counter(
            "pdserve_migration_recomputed_tokens_total",
            "Tokens a draining engine computed to hand streams' KV off (the rest were cached).",
            tags)
        self._stops_drained = pool_counter(
            "pdserve_stop_drains_total",
            "Drains this replica started itself when Ray Serve began stopping it.", tags)

    async def generate(self, request: DecodeRequest) -> AsyncIterator[RequestOutput]:
        """Generate, pulling the prompt's KV first when the request carries transfer params;
        a pull that yields no token within `pull_timeout_s` is taken for stuck, and this engine
        prefills the prompt itself."""
        if self.draining:
            raise ReplicaLost("draining", replica=self.replica_id)
        span = self.span(f"pdserve.{self.role}.engine", **{
            "pdserve.request_id": request.request_id,
            "pdserve.kv_transfer.pull": request.kv_transfer_params is not None})
        tokens, finish_reasons, error, last = 0, None, None, None
        head: RequestOutput | None = None  # the first output: the only one with the prompt
        final_only = request.sampling_params.output_kind == RequestOutputKind.FINAL_ONLY
        cumulative = engine_output_kind(request) == RequestOutputKind.CUMULATIVE
        try:
            outputs = self._generate(request, span)
            if request.kv_transfer_params is not None:
                blocks = offered_blocks(request.kv_transfer_params)
                pull = self.span("pdserve.kv_transfer", span, **{
                    "pdserve.kv_transfer.blocks": blocks,
                    "pdserve.kv_transfer.bytes": blocks * self.kv_block_bytes,
                    "pdserve.kv_transfer.remote_engine_id":
                        request.kv_transfer_params.get("remote_engine_id")})
                outcome, first = "error", None
                try:  # the pull ends when the engine, holding the KV, gives its first token
                    first = await asyncio.wait_for(anext(outputs),
                                                   self.model.kv_transfer.pull_timeout_s)
                    outcome = "ok"
                except TimeoutError:  # the stuck request is aborted once its transfer ends
                    outcome = "timeout"
                    logger.warning("request %s: no token %g s after its KV pull began; "
                                   "prefilling locally", request.request_id,
                                   self.model.kv_transfer.pull_timeout_s)
                    self._pull_timeouts.inc()
                    outputs = self._generate(replace(
                        request, request_id=f"{request.request_id}-local",
                        kv_transfer_params=None), span)
                except StopAsyncIteration:
                    outcome = "ok"
                finally:
                    tracing.finish(pull, **{"pdserve.kv_transfer.outcome": outcome})
                if outcome == "ok":
                    if first is None:
                        return
                    tokens, last, head = count_tokens(first, tokens, cumulative), first, first
                    span.add_event(tracing.FIRST_OUTPUT_EVENT)
                    if not final_only or first.finished:
                        yield first
            async with aclosing(outputs):
                async for output in outputs:
                    if last is None:
                        span.add_event(tracing.FIRST_OUTPUT_EVENT)
                    tokens, last = count_tokens(output, tokens, cumulative), output
                    head = head or output
                    if output.finished:
                        finish_reasons = tuple(str(o.finish_reason) for o in output.outputs)
                    elif final_only:  # (a pulled one's earlier outputs stay here)
                        continue
                    if final_only and output is not head:  # it goes first: the prompt too
                        output.prompt = head.prompt
                        output.prompt_token_ids = head.prompt_token_ids
                    yield output
        except EngineDeadError as exc:
            error = exc
            # until Ray's health check replaces this replica, resumes must go elsewhere
            raise ReplicaLost("engine_dead", replica=self.replica_id) from None
        except Exception as exc:
            error = exc
            raise
        finally:
            tracing.finish(span, error, **{"pdserve.generated_tokens": tokens,
                                           "gen_ai.response.finish_reasons": finish_reasons,
                                           **engine_timings(last)})

    async def _generate(self, request: DecodeRequest,
                        span: tracing.Span | None = None) -> AsyncIterator[RequestOutput]:
        pulling = request.kv_transfer_params is not None
        signals = self.track(request.routing, computes_prompt=not pulling)
        params = request.engine_params()
        delivered: list[int] = []  # token ids of the outputs the caller received
        hand_off = partial(self._hand_off, request, delivered) if movable(params) else None
        params.output_kind = engine_output_kind(request)
        cumulative = params.output_kind == RequestOutputKind.CUMULATIVE
        async for output in self.stream.outputs(
                request.engine_input, params, request.request_id, signals, pulling, hand_off,
                request.caller, self.trace_headers(span) if span is not None else None,
                request.lora_request):
            if hand_off is not None:
                if cumulative:
                    delivered[:] = output.outputs[0].token_ids
                else:
                    delivered.extend(output.outputs[0].token_ids)
            yield output

    async def check_health(self) -> None:
        if self._watching_stop is None:  # Serve checks a replica's health once it runs
            self._watching_stop = asyncio.get_running_loop().create_task(
                self._drain_when_stopped())
        await super().check_health()

    async def _drain_when_stopped(self) -> None:
        """Drain once Ray Serve takes this replica out of its pool's running set (`stopping.py`);
        undrain if it comes back (a replica Serve reconfigures leaves the set for a moment)."""
        context = serve.get_replica_context()
        # the pool's replica set, without the KV-event index a routing process keeps
        pool = pool_state(context.app_name, context.deployment, follow_kv_events=False)
        handle = serve.get_deployment_handle(context.deployment, context.app_name)
        delay = 1.0
        while not pool.synced:
            try:
                # a first call (to any replica) starts this process's router for its own pool,
                # which then follows Ray's broadcasts of the running replicas
                await handle.health.remote()
            except Exception as exc:  # e.g. it reached a replica that is failing: try again
                logger.info("engine %s: watch for its own stop not started yet (%s)",
                            self.engine_id, exc)
            if not pool.synced:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        members = lambda: pool.members  # noqa: E731
        while True:
            await wait_until_removed(members, self.replica_id, STOP_CHECK_PERIOD_S,
                                     confirmations=3)
            logger.warning("engine %s: Ray Serve is stopping this replica; draining",
                           self.engine_id)
            self._stops_drained.inc()
            try:
                await self.drain()
            except Exception:
                logger.exception("engine %s: drain on stop failed", self.engine_id)
            while self.replica_id not in members():
                await asyncio.sleep(STOP_CHECK_PERIOD_S)
            logger.warning("engine %s: back in its pool's running set; undrained",
                           self.engine_id)
            await self.undrain()

    async def __del__(self) -> None:  # type: ignore[override]
        """Ray Serve awaits this after the replica's requests ended (it accepts an async
        `__del__`): if streams were handed off with their KV, wait until the next replicas
        pulled it (every block free again), then shut the engine down."""
        if getattr(self, "handoffs", {}).get("kv") and not self.watchdog.stalled:
            with contextlib.suppress(Exception):  # a dead engine, or the wait ran out
                await asyncio.wait_for(self._all_kv_free(), HANDOFF_PULL_WAIT_S)
        super().__del__()

    async def _all_kv_free(self) -> None:
        """Until the engine holds no KV block (vLLM resets its prefix cache only then; the
        engine is about to stop, so losing the cache costs nothing)."""
        while not await self.engine.reset_prefix_cache():
            await asyncio.sleep(0.1)

    def on_stalled(self, stalled_s: float) -> None:
        failed = self.stream.fail_all(lambda: ReplicaLost(
            "stalled", f"no engine step for {stalled_s:.0f} s", replica=self.replica_id))
        logger.error("engine %s: %d streams sent elsewhere", self.engine_id, failed)

    async def drain(self, replica: str | None = None,
                    timeout_s: float = DRAIN_TIMEOUT_S) -> dict[str, Any]:
        """Stop taking requests and move the live streams to other replicas (the ones that
        cannot move finish here, up to `timeout_s`); what happened, per kind, and the prompt
        tokens this engine computed to hand the streams' KV off (vLLM's cache-hit count)."""
        self.draining = True
        before, recomputed_before = dict(self.handoffs), self.handoff_recomputed
        asked = self.stream.hand_off_all()
        deadline = time.monotonic() + timeout_s
        while self.stream.live and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        logger.info("engine %s drained: %d streams asked to move", self.engine_id, asked)
        return {"replica": self.replica_id, "asked": asked,
                **{f"moved_{k}": v - before[k] for k, v in self.handoffs.items()},
                "recomputed_tokens": self.handoff_recomputed - recomputed_before,
                "still_running": len(self.stream.live)}

    async def undrain(self, replica: str | None = None) -> None:
        """Take requests again."""
        self.draining = False

    async def _hand_off(self, request: DecodeRequest, delivered: list[int],
                        had_output: bool) -> BaseException:
        """What ends a stream asked to move: `ReplicaLost("draining")`, with the request's KV
        ready to pull when this engine can produce it."""
        handoff = await self._produce_kv(request, delivered) if had_output else None
        how = "kv" if handoff else "recompute"
        self.handoffs[how] += 1
        self._migrations.inc(tags={"how": how})
        if handoff is not None:
            self.handoff_recomputed += handoff.recomputed
            if handoff.recomputed:
                self._handoff_recomputed.inc(handoff.recomputed)
        return ReplicaLost("draining", replica=self.replica_id, handoff=handoff)

    async def _produce_kv(self, request: DecodeRequest,
                          delivered: list[int]) -> KVHandoff | None:
        """Run prompt + delivered tokens as a prefill kept for a remote decoder (None: this
        engine has no KV connector, or it failed: the stream then recomputes elsewhere)."""
        if self.engine.vllm_config.kv_transfer_config is None or not isinstance(
                request.engine_input, dict):
            return None
        ids = [*extended_prompt_ids(request.engine_input), *delivered]
        engine_input: Any = {k: v for k, v in request.engine_input.items() if k != "prompt"}
        engine_input["prompt_token_ids"] = ids
        final = None
        try:
            # bounded: a hung engine must not hold the stream (it then recomputes elsewhere)
            async with asyncio.timeout(self.model.kv_transfer.pull_timeout_s):
                async for output in self.engine.generate(
                        engine_input, prefill_params(request.sampling_params),
                        f"{request.request_id}-handoff", lora_request=request.lora_request):
                    final = output
        except Exception as exc:  # the stream recomputes elsewhere instead
            logger.warning("request %s: KV handoff failed (%s)", request.request_id, exc)
            return None
        params = final.kv_transfer_params if final is not None else None
        if final is None or not is_pull_ready(params):
            return None
        cached = final.num_cached_tokens or 0
        return KVHandoff(params, len(ids), len(ids) - cached)  # type: ignore[arg-type]


def engine_output_kind(request: DecodeRequest) -> RequestOutputKind:
    """How the engine outputs `request`: as its caller asked, except that a non-streamed one
    pulling its KV runs cumulative. Its one output would come at the end, however long it runs,
    and the pull deadline waits for the first: cumulative outputs mark the pull's end
    (`GeneratingHost.generate` passes on only the last, which is the one FINAL_ONLY gives)."""
    kind = request.sampling_params.output_kind
    if kind == RequestOutputKind.FINAL_ONLY and request.kv_transfer_params is not None:
        return RequestOutputKind.CUMULATIVE
    return kind


def count_tokens(output: RequestOutput, so_far: int, cumulative: bool) -> int:
    """Tokens generated so far, after `output` (cumulative outputs repeat the earlier ones)."""
    new = sum(len(o.token_ids) for o in output.outputs)
    return new if cumulative else so_far + new


@serve.deployment
class DecodeServer(GeneratingHost):
    """Decode pool: pulls KV over NIXL, or prefills locally when no params came (fallback)."""

    role = "decode"

    async def release_kv(self, request_id: str, kv_transfer_params: KVTransferParams) -> None:
        """Free a finished prefill's KV on its prefill engine: the decode meant to pull it is
        gone. vLLM's own way: this engine admits a pre-aborted request carrying the transfer
        params, and its connector tells the prefill engine to free the blocks."""
        await self.engine.notify_kv_transfer_request_rejected(request_id,
                                                              dict(kv_transfer_params))


@serve.deployment
class ColocatedServer(GeneratingHost):
    """Colocated pool: one engine prefills and decodes."""

    role = "colocated"
