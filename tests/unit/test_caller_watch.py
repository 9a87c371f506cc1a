"""A stream whose caller (an ingress replica) is gone ends, and its engine request is aborted;
the streams of callers that live go on. Pure asyncio: a fake engine and a fake actor lookup."""

from __future__ import annotations

import asyncio

from test_output_coalescing import SlowEngine
from vllm.sampling_params import RequestOutputKind, SamplingParams

from pdserve.deployments.autoscaling.signals import ReplicaSLOSignals
from pdserve.deployments.engine.callers import Caller, CallerGone, watch_callers
from pdserve.deployments.engine.streaming import OutputStream

DEAD, LIVE = Caller("SERVE_REPLICA::app#ingress#dead", "serve"), Caller("ingress-2", "serve")


def test_the_streams_of_a_caller_that_is_gone_end_and_are_aborted_the_others_go_on() -> None:
    engine = SlowEngine()
    stream = OutputStream(engine, set())  # type: ignore[arg-type]
    gone: list[Caller] = []
    looked_up: list[Caller] = []

    def alive(caller: Caller) -> bool:
        looked_up.append(caller)
        return caller != DEAD

    def on_gone(caller: Caller) -> None:
        gone.append(caller)
        stream.fail_caller(caller, lambda: CallerGone(caller.name))

    async def read(request_id: str, caller: Caller | None) -> tuple[int, BaseException | None]:
        params = SamplingParams(output_kind=RequestOutputKind.DELTA)
        received = 0
        try:
            async for _ in stream.outputs({}, params, request_id, ReplicaSLOSignals().start(1),
                                          False, caller=caller):
                received += 1
                if received == 20:
                    return received, None
        except CallerGone as exc:
            return received, exc
        return received, None

    async def go() -> list[tuple[int, BaseException | None]]:
        watch = asyncio.create_task(watch_callers(stream.callers, on_gone, 0.05, alive))
        try:
            return await asyncio.gather(read("orphan", DEAD), read("kept", LIVE),
                                        read("anonymous", None))
        finally:
            watch.cancel()

    (orphan, orphan_error), (kept, kept_error), (anonymous, _) = asyncio.run(go())
    assert isinstance(orphan_error, CallerGone) and 0 < orphan < 20, (orphan, orphan_error)
    assert kept == anonymous == 20 and kept_error is None
    assert gone and set(gone) == {DEAD}
    assert set(looked_up) == {DEAD, LIVE}  # only named callers are looked up
    assert engine.events.count("aborted") >= 1  # the orphan's engine request was cancelled
    assert stream.live == {}


def test_outside_an_actor_there_is_no_caller() -> None:
    from pdserve.deployments.engine.actors import this_actor

    assert this_actor() is None  # no Ray here: a driver's requests are never aborted
