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


class SlowEngine:
    """Stands in for AsyncLLM.generate: one delta per tick until cancelled; records events."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def generate(self, engine_input, params, request_id, **_):  # noqa: ANN001, ANN003, ANN201
        try:
            for token in range(100):
                await asyncio.sleep(0.01)
                yield delta([token])
        except asyncio.CancelledError:
            self.events.append("aborted")
            raise


def test_a_handed_off_stream_ends_after_what_was_sent_and_aborts_only_after_the_handoff() -> None:
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    from pdserve.deployments.autoscaling.signals import ReplicaSLOSignals
    from pdserve.deployments.engine.streaming import OutputStream

    engine = SlowEngine()
    stream = OutputStream(engine, set())  # type: ignore[arg-type]
    sent: list[int] = []

    async def hand_off(had_output: bool) -> BaseException:
        engine.events.append(f"handoff after {len(sent)} tokens, output={had_output}")
        await asyncio.sleep(0.05)  # the engine keeps the request while the handoff runs
        return LookupError(len(sent))

    async def go() -> BaseException:
        params = SamplingParams(output_kind=RequestOutputKind.DELTA)
        signals = ReplicaSLOSignals().start(2)
        try:
            async for output in stream.outputs({}, params, "r", signals, False, hand_off):
                sent.extend(output.outputs[0].token_ids)
                if len(sent) >= 3 and stream.hand_off_all() != 1:
                    raise AssertionError("the live stream was not asked")
        except LookupError as exc:
            await asyncio.sleep(0.05)
            return exc
        raise AssertionError("the stream was not handed off")

    error = asyncio.run(go())
    assert error.args == (len(sent),)  # the handoff covered exactly what the caller got
    assert sent == list(range(len(sent))) and len(sent) >= 3
    assert engine.events == [f"handoff after {len(sent)} tokens, output=True", "aborted"]
    assert stream.live == {}
