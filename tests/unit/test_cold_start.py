"""A generate call to a pool with no replica waits for one, boundedly, and reports that wait;
a pool whose router never reported (one of Ray's own routers) is not a reported cold start."""

from __future__ import annotations

import asyncio
from typing import Any

from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams

from pdserve.decode.request import DecodeRequest
from pdserve.deployments.frontend.pool_calls import pool_calls
from pdserve.routing.pool_state import PoolState


class FakeStream:
    """A streaming handle call's response: one output, then the end."""

    def __init__(self) -> None:
        self.outputs = [RequestOutput("r1", "", [1, 2], None, [CompletionOutput(
            0, "", [3], None, None, "length")], finished=True)]

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if not self.outputs:
            raise StopAsyncIteration
        return self.outputs.pop()

    def cancel(self) -> None:
        pass


class FakeHandle:
    deployment_name = "m-colocated"

    def options(self, **_: Any) -> FakeHandle:
        return self

    @property
    def generate(self) -> FakeHandle:
        return self

    def remote(self, request: DecodeRequest) -> FakeStream:
        return FakeStream()


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
