"""A model's Serve handles as the plain calls the orchestrator makes, and the PD plan over the
pools' live state (the routers of this process keep that state; see `routing/pool_state.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ray.serve.handle import DeploymentHandle
from vllm.exceptions import RetryableRequestError
from vllm.outputs import RequestOutput

from pdserve.decode.orchestrator import Planner, PoolCalls
from pdserve.decode.request import DecodeRequest
from pdserve.deployments.config.models import ModelConfig
from pdserve.deployments.config.pools import Role
from pdserve.deployments.engine.wire import PromptRestorer
from pdserve.deployments.frontend.remote_errors import engine_error
from pdserve.kv_transfer.params import KVTransferParams, is_pull_ready
from pdserve.prefill.request import PrefillRequest, PrefillResult
from pdserve.routing.plan import Plan, PlanInputs, PlanThresholds, decide
from pdserve.routing.pool_state import PoolState, pool_state
from pdserve.routing.types import RoutingInfo

logger = logging.getLogger(__name__)

#: How long a prefill call whose deadline passed may still answer before it is cancelled. An
#: answer already on its way is then taken and its KV released at once: a cancel that overtakes
#: it loses it (Ray's gRPC call is cancelled with it), and the prefill engine holds that KV until
#: its lease (`kv_transfer.kv_lease_s`) ends. (When the client leaves, Ray cancels the calls its
#: request made itself, at once: an answer overtaken then is left to the lease.)
PREFILL_SETTLE_S = 1.0
#: How often a call waiting for a pool's first replica looks whether the router has one.
COLD_START_POLL_S = 0.1


def pool_calls(
    handles: dict[Role, DeploymentHandle],
    states: dict[Role, PoolState] | None = None,
    cold_start_timeout_s: float = 300.0,
    on_cold_start: Callable[[float, bool], None] | None = None,
    prefill_settle_s: float = PREFILL_SETTLE_S,
) -> PoolCalls:
    """Wrap a model's Serve handles as the plain calls the orchestrator expects.

    A request that finds the generating pool at zero replicas (scaled to zero, or every
    replica lost with its node) waits for Ray to start one (the autoscaler sees it queued at
    the handle) up to `cold_start_timeout_s`, then fails with a retryable 503;
    `on_cold_start(wait_s, timed_out)` reports the wait (`first_output`)."""
    role = "decode" if "decode" in handles else "colocated"
    generate_pool = handles[role]
    state = (states or {}).get(role)

    def generate(request: DecodeRequest) -> AsyncIterator[RequestOutput]:
        # dispatched here, not at the first output: the call carries the caller's trace context
        # (a pool whose router never reported, e.g. one of Ray's own routers, may be at zero
        # too: its wait is bounded alike, but only a wait for a pool seen empty is reported)
        cold = state is not None and state.num_replicas() == 0
        seen_empty = cold and state is not None and state.synced
        started = time.perf_counter()
        return outputs_of(generate_pool.options(stream=True).generate.remote(request), cold,
                          started, seen_empty)

    async def outputs_of(responses: Any, cold: bool, started: float,
                         seen_empty: bool = False) -> AsyncIterator[RequestOutput]:
        restore = PromptRestorer()
        done = False
        try:
            outputs = aiter(responses)
            if cold:
                first, waited_s = await first_output(outputs, started)
                if first is None:
                    if on_cold_start:
                        on_cold_start(waited_s, True)
                    raise RetryableRequestError(
                        f"no replica of {generate_pool.deployment_name} became ready within "
                        f"{cold_start_timeout_s:g} s (the pool was scaled to zero, or its replicas "
                        "died with their node); retry later")
                if on_cold_start and seen_empty:
                    on_cold_start(waited_s, False)
                yield restore(first)
            async for output in outputs:
                yield restore(output)
            done = True
        except RetryableRequestError:
            raise
        except Exception as exc:
            raise engine_error(exc) from None
        finally:
            if not done:
                responses.cancel()

    async def first_output(outputs: AsyncIterator[RequestOutput],
                           started: float) -> tuple[RequestOutput | None, float]:
        """The first output of a call sent while the pool had no replica, and the seconds
        waited until this process's router first saw one; None if the pool had none for
        `cold_start_timeout_s` in all while the call waited. Only time without a replica counts:
        while the router sees one the call runs as long as it takes (a non-streamed request's
        one output comes at its end), and a replica that vanishes again (it died starting, or
        its node went) leaves the call bounded as before. A pool whose router never reports
        (one of Ray's own) is bounded up to its first output."""
        pending = asyncio.ensure_future(anext(outputs))
        empty_s, seen_s = 0.0, None  # time without a replica; when one was first seen
        last, had_replica = started, False
        try:
            while not pending.done():
                now = time.perf_counter()
                if not had_replica:
                    empty_s += now - last
                last = now
                had_replica = state is not None and state.num_replicas() > 0
                if had_replica and seen_s is None:
                    seen_s = now - started
                if not had_replica and empty_s >= cold_start_timeout_s:
                    return None, now - started
                await asyncio.wait({pending}, timeout=COLD_START_POLL_S if had_replica else
                                   min(cold_start_timeout_s - empty_s, COLD_START_POLL_S))
            return pending.result(), (time.perf_counter() - started if seen_s is None
                                      else seen_s)
        finally:
            if not pending.done():
                pending.cancel()

    if "prefill" not in handles:
        return PoolCalls(generate=generate)

    async def release_kv(request_id: str, kv_params: KVTransferParams) -> None:
        await generate_pool.release_kv.remote(request_id, kv_params)

    settling: set[asyncio.Task] = set()

    def prefill(request: PrefillRequest) -> Awaitable[PrefillResult]:
        # dispatched here, not when awaited: the call carries the caller's trace context
        return result_of(handles["prefill"].prefill.remote(request), request)

    async def result_of(response: Any, request: PrefillRequest) -> PrefillResult:
        answer = asyncio.ensure_future(response)  # a task: a caller's cancel leaves it be
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:  # deadline passed (or client left: see PREFILL_SETTLE_S)
            task = asyncio.create_task(settle(answer, response, request.request_id, release_kv,
                                              prefill_settle_s))
            settling.add(task)
            task.add_done_callback(settling.discard)
            raise
        except Exception as exc:
            raise engine_error(exc) from None

    return PoolCalls(generate=generate, prefill=prefill, release_kv=release_kv)


async def settle(answer: asyncio.Future[PrefillResult], response: Any, request_id: str,
                 release_kv: Callable[[str, KVTransferParams], Awaitable[None]],
                 grace_s: float) -> bool:
    """A prefill call nobody waits for any more: let it answer for `grace_s`, else cancel it
    (its engine stops); an answer it gave either way has its KV released."""
    done, _ = await asyncio.wait({answer}, timeout=grace_s)
    if not done:
        try:
            response.cancel()
        except Exception as exc:  # (an assignment that failed as it was cancelled)
            logger.warning("request %s: cancelling its prefill failed (%s)", request_id, exc)
    return await release_if_finished(answer, request_id, release_kv)


async def release_if_finished(response: Awaitable[PrefillResult], request_id: str,
                              release_kv: Callable[[str, KVTransferParams], Awaitable[None]],
                              ) -> bool:
    """A prefill nobody waits for (deadline, client gone) may have finished anyway: its engine
    then holds the KV for a decoder that will never come. Wait for the call's outcome and, if
    it is a result, free that KV now rather than at the end of its lease."""
    try:
        result = await response
    except BaseException:  # cancelled in time (the engine aborted it) or failed: nothing held
        return False
    if not is_pull_ready(result.kv_transfer_params):
        return False
    try:
        await release_kv(f"{request_id}-release", result.kv_transfer_params)
    except Exception as exc:  # the lease still frees it
        logger.warning("request %s: could not release a cancelled prefill's KV (%s)",
                       request_id, exc)
        return False
    return True


def pool_states(handles: dict[Role, DeploymentHandle]) -> dict[Role, PoolState]:
    """This process's view of each pool (shared with the pools' routers)."""
    return {role: pool_state(h.app_name, h.deployment_name) for role, h in handles.items()}


def make_planner(model: ModelConfig, pools: dict[Role, PoolState], block_size: int) -> Planner:
    """The PD plan over live pool data: decode-side cached prefix, prefill calls in flight."""
    thresholds = PlanThresholds(
        local_prefill_below_tokens=model.routing.local_prefill_below_tokens,
        max_prefill_queue_per_replica=model.routing.max_prefill_queue_per_replica,
    )
    prefill, decode = pools["prefill"], pools["decode"]

    def planner(info: RoutingInfo, forced_local: str | None) -> Plan:
        inputs = PlanInputs(
            prompt_tokens=info.prompt_tokens,
            block_size=block_size,
            # (not on replicas a resumed request avoids: their engine died or stalled, its
            # cache is of no use to the continuation)
            decode_hit_blocks=(decode.best_hit(info.block_hashes, info.avoid)
                               if info.block_hashes else 0),
            prefill_in_flight=prefill.in_flight_total(),
            # none while the pool's only replica is replaced (PD pools keep at least one):
            # prefill locally rather than wait out the prefill deadline; one until the pool's
            # router has reported (it starts with the first prefill call)
            prefill_replicas=prefill.num_replicas() if prefill.synced else 1,
        )
        return decide(inputs, thresholds, forced_local)

    return planner
