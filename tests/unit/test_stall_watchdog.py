"""An engine with work that stops stepping is found stalled, once; an idle one never is."""

from __future__ import annotations

import asyncio

from pdserve.deployments.engine.watchdog import StallWatchdog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_busy_without_steps_past_the_timeout_is_a_stall_and_it_sticks() -> None:
    clock = Clock()
    dog = StallWatchdog(5.0, clock)
    clock.now = 4.0
    assert not dog.observe(busy=True)
    dog.stepped()  # a step at t=4
    clock.now = 9.0
    assert not dog.observe(busy=True)  # 5 s since the step: not yet past the timeout
    clock.now = 9.5
    assert dog.observe(busy=True)
    assert dog.stalled_for == 5.5
    dog.stepped()  # a late step does not make it healthy again
    assert dog.observe(busy=False) and dog.stalled_for == 5.5


def test_an_idle_engine_is_never_stalled_and_work_after_idling_gets_a_fresh_timeout() -> None:
    clock = Clock()
    dog = StallWatchdog(5.0, clock)
    clock.now = 100.0
    assert not dog.observe(busy=False)  # idle for 100 s: nothing to make progress on
    clock.now = 104.0
    assert not dog.observe(busy=True)  # busy since at most 4 s
    clock.now = 105.5
    assert dog.observe(busy=True)


def test_the_watch_loop_reports_a_stall_once() -> None:
    async def go() -> list[float]:
        stalls: list[float] = []
        dog = StallWatchdog(0.2)
        await asyncio.wait_for(dog.run(lambda: True, stalls.append, period_s=0.01), 5)
        return stalls

    (stalled_for,) = asyncio.run(go())
    assert stalled_for > 0.2
