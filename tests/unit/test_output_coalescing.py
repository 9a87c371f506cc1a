"""Outputs already waiting are merged into one stream message, without losing tokens."""

from __future__ import annotations

import asyncio

from vllm.outputs import CompletionOutput, RequestOutput

from pdserve.deployments.engine.streaming import END, coalesce


def delta(tokens: list[int], finished: bool = False) -> RequestOutput:
    completion = CompletionOutput(
        index=0, text="".join(f"<{t}>" for t in tokens), token_ids=tokens,
        cumulative_logprob=None, logprobs=None,
    )
    return RequestOutput("r", None, [1, 2], None, [completion], finished=finished)


def test_waiting_deltas_merge_in_order_and_the_end_marker_is_kept() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    for item in (delta([4]), delta([5], finished=True), END):
        queue.put_nowait(item)
    merged, pending = coalesce(delta([3]), queue, aggregate=True)
    assert list(merged.outputs[0].token_ids) == [3, 4, 5]
    assert merged.outputs[0].text == "<3><4><5>"
    assert merged.finished
    assert pending is END and queue.empty()


def test_cumulative_outputs_keep_only_the_newest() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait(delta([3, 4]))
    merged, pending = coalesce(delta([3]), queue, aggregate=False)
    assert list(merged.outputs[0].token_ids) == [3, 4] and pending is None


def test_an_error_stops_merging_and_is_returned() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    error = RuntimeError("engine died")
    for item in (error, delta([9])):
        queue.put_nowait(item)
    merged, pending = coalesce(delta([3]), queue, aggregate=True)
    assert list(merged.outputs[0].token_ids) == [3] and pending is error
    assert queue.qsize() == 1
