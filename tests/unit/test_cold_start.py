"""A generate call to a pool with no replica waits for one, boundedly (the wait, not the
generation after it), and reports that wait;
a pool whose router never reported (one of Ray's own routers) is not a reported cold start."""

from __future__ import annotations

import asyncio
from typing import Any

from vllm.exceptions import RetryableRequestError
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams

from pdserve.decode.request import DecodeRequest
from pdserve.deployments.frontend.pool_calls import pool_calls
from pdserve.routing.pool_state import PoolState


class FakeStream:
    """A streaming handle call's response: one output `delay_s` after the call, then the end."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.outputs = [RequestOutput("r1", "", [1, 2], None, [CompletionOutput(
            0, "", [3], None, None, "length")], finished=True)]

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if not self.outputs:
            raise StopAsyncIteration
        await asyncio.sleep(self.delay_s)
        return self.outputs.pop()

    def cancel(self) -> None:
        pass


class FakeHandle:
    deployment_name = "m-colocated"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def options(self, **_: Any) -> FakeHandle:
        return self

    @property
    def generate(self) -> FakeHandle:
        return self

    def remote(self, request: DecodeRequest) -> FakeStream:
        return FakeStream(self.delay_s)


def reported_waits(state: PoolState) -> list[bool]:
    reported: list[bool] = []
    calls = pool_calls({"colocated": FakeHandle()}, {"colocated": state},  # type: ignore[dict-item]
                       on_cold_start=lambda wait_s, timed_out: reported.append(timed_out))

    async def run() -> None:
        request = DecodeRequest("r1", {"prompt_token_ids": [1, 2]}, SamplingParams())
        assert len([o async for o in calls.generate(request)]) == 1

    asyncio.run(run())
    return reported


def test_a_wait_for_a_pool_seen_empty_is_reported() -> None:
    state = PoolState("app/m-colocated")
    state.sync_replicas({})  # scaled to zero
    assert reported_waits(state) == [False]
    state.sync_replicas({"r1": None})
    assert reported_waits(state) == []


def test_a_pool_whose_router_never_reported_is_no_cold_start() -> None:
    assert reported_waits(PoolState("app/m-colocated")) == []


def cold_call(replica_after_s: float | None, gone_after_s: float | None = None,
              output_after_s: float = 0.6) -> tuple[object, list[bool]]:
    """A non-streamed call to a pool seen empty, bounded at 0.3 s, whose one output comes
    `output_after_s` after it was sent; the router sees a replica `replica_after_s` after it
    (or never), and none again from `gone_after_s` (or never)."""
    state = PoolState("app/m-colocated")
    state.sync_replicas({})
    reported: list[bool] = []
    calls = pool_calls({"colocated": FakeHandle(delay_s=output_after_s)},  # type: ignore[dict-item]
                       {"colocated": state}, cold_start_timeout_s=0.3,
                       on_cold_start=lambda wait_s, timed_out: reported.append(timed_out))

    async def replica_starts() -> None:
        if replica_after_s is not None:
            await asyncio.sleep(replica_after_s)
            state.sync_replicas({"r1": None})
        if gone_after_s is not None:
            await asyncio.sleep(gone_after_s - (replica_after_s or 0.0))
            state.sync_replicas({})

    async def run() -> object:
        starting = asyncio.create_task(replica_starts())
        request = DecodeRequest("r1", {"prompt_token_ids": [1, 2]}, SamplingParams())
        try:
            return [o async for o in calls.generate(request)]
        except RetryableRequestError as exc:
            return exc
        finally:
            await starting

    return asyncio.run(run()), reported


def test_only_the_wait_for_a_replica_is_bounded_not_the_generation_after_it() -> None:
    outputs, reported = cold_call(replica_after_s=0.1)
    assert isinstance(outputs, list) and len(outputs) == 1 and reported == [False]


def test_a_replica_that_vanishes_again_leaves_the_wait_bounded() -> None:
    # seen from 0.1 s to 0.2 s: 0.1 s without one before, 0.2 s more after -> fails at ~0.4 s
    error, reported = cold_call(replica_after_s=0.1, gone_after_s=0.2, output_after_s=1.5)
    assert isinstance(error, RetryableRequestError) and reported == [True]
    # the time it had one does not count: 0.25 s without one in all, then the output
    outputs, reported = cold_call(replica_after_s=0.1, gone_after_s=0.45, output_after_s=0.5)
    assert isinstance(outputs, list) and len(outputs) == 1 and reported == [False]


def test_a_pool_that_gets_no_replica_in_time_fails_retryably() -> None:
    error, reported = cold_call(replica_after_s=None)
    assert isinstance(error, RetryableRequestError) and "became ready" in str(error)
    assert reported == [True]
