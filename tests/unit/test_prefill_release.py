"""A cancelled prefill that finished anyway has its KV released, not left to the lease."""

from __future__ import annotations

import asyncio

from pdserve.deployments.frontend.pool_calls import release_if_finished
from pdserve.prefill.request import PrefillResult

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
