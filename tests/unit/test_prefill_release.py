"""A prefill nobody waits for that finished anyway has its KV released, not left to the lease;
one that answers just past its deadline is taken, not cancelled (a cancel would lose it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.exceptions import EngineDeadError

from pdserve.decode.resume import ReplicaLost
from pdserve.deployments.frontend.pool_calls import pool_calls, release_if_finished
from pdserve.prefill.request import PrefillRequest, PrefillResult

READY = {"do_remote_prefill": True, "remote_engine_id": "p0", "remote_block_ids": [1, 2]}


def settle(outcome: object) -> tuple[bool, list[tuple[str, dict]]]:
    released: list[tuple[str, dict]] = []

    async def response() -> PrefillResult:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]

    async def release(request_id: str, params: dict) -> None:
        released.append((request_id, params))

    done = asyncio.run(release_if_finished(response(), "r1-prefill", release))  # type: ignore[arg-type]
    return done, released


def test_a_prefill_that_finished_before_its_cancel_is_released() -> None:
    done, released = settle(PrefillResult("r1-prefill", READY, prompt_tokens=64))  # type: ignore[arg-type]
    assert done and released == [("r1-prefill-release", READY)]


def test_a_prefill_aborted_by_its_cancel_holds_nothing() -> None:
    assert settle(asyncio.CancelledError()) == (False, [])
    assert settle(RuntimeError("request cancelled")) == (False, [])
    not_ready = PrefillResult("r1-prefill", {"do_remote_prefill": False}, prompt_tokens=1)  # type: ignore[arg-type]
    assert settle(not_ready) == (False, [])


class FakeResponse:
    """A prefill call's response as the handle gives it: awaitable once, cancellable; answers
    `after_s` after it is sent, unless cancelled first (then it raises, as Ray's does)."""

    def __init__(self, after_s: float, result: PrefillResult) -> None:
        self.after_s, self.result, self.cancelled = after_s, result, False
        self._answer = asyncio.ensure_future(self._answer_later())

    async def _answer_later(self) -> PrefillResult:
        await asyncio.sleep(self.after_s)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result

    def cancel(self) -> None:
        self.cancelled = True
        self._answer.cancel()

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._answer.__await__()


class FakeMethod:
    def __init__(self, call: Callable[..., Any]) -> None:
        self.remote = call


class FakeHandle:
    def __init__(self, **methods: Callable[..., Any]) -> None:
        for name, call in methods.items():
            setattr(self, name, FakeMethod(call))


def past_deadline(answer_after_s: float) -> tuple[FakeResponse, list[tuple[str, dict]]]:
    """A prefill call whose caller stops waiting after 0.05 s (its deadline), with a grace of
    1.5 s, the prefill answering `answer_after_s` after it was sent; what was released."""
    released: list[tuple[str, dict]] = []
    responses: list[FakeResponse] = []

    async def release(request_id: str, params: dict) -> None:
        released.append((request_id, params))

    def prefill(request: PrefillRequest) -> FakeResponse:
        responses.append(FakeResponse(answer_after_s, PrefillResult(
            request.request_id, READY, prompt_tokens=64)))  # type: ignore[arg-type]
        return responses[0]

    async def run() -> None:
        handles = {"prefill": FakeHandle(prefill=prefill),
                   "decode": FakeHandle(release_kv=release)}
        calls = pool_calls(handles, prefill_settle_s=1.5)  # type: ignore[arg-type]
        assert calls.prefill is not None
        request = PrefillRequest("r1-prefill", {"prompt_token_ids": [1, 2]}, SamplingParams())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(calls.prefill(request), 0.05)
        await asyncio.sleep(2.5)

    asyncio.run(run())
    return responses[0], released


def test_a_prefill_answering_just_past_its_deadline_is_taken_and_released_not_cancelled() -> None:
    response, released = past_deadline(0.1)
    assert not response.cancelled and released == [("r1-prefill-release", READY)]


def test_a_prefill_still_running_past_its_grace_is_cancelled_and_holds_nothing() -> None:
    response, released = past_deadline(2.0)
    assert response.cancelled and released == []



def test_an_answer_in_time_passes_through_and_an_error_is_mapped_as_the_engines() -> None:
    async def run(outcome: object) -> object:
        async def release(request_id: str, params: dict) -> None:
            raise AssertionError("nothing to release")

        calls = pool_calls({  # type: ignore[dict-item]
            "prefill": FakeHandle(prefill=lambda request: FakeResponse(0.01, outcome)),  # type: ignore[arg-type]
            "decode": FakeHandle(release_kv=release)})
        assert calls.prefill is not None
        request = PrefillRequest("r1-prefill", {"prompt_token_ids": [1, 2]}, SamplingParams())
        try:
            return await calls.prefill(request)
        except Exception as exc:
            return exc

    answer = PrefillResult("r1-prefill", READY, prompt_tokens=64)  # type: ignore[arg-type]
    assert asyncio.run(run(answer)) == answer
    lost = asyncio.run(run(EngineDeadError()))
    assert isinstance(lost, ReplicaLost) and lost.reason == "engine_dead", lost
