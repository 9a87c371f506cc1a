"""Noticing an engine that stopped making progress while it has work (a wedged or stopped
engine core, a stuck collective): vLLM's own health check reads only its errored flag, so such
an engine looks healthy while every request on it hangs.

vLLM calls the replica's stat logger once per engine step while the engine has requests
(`reports.py` forwards it here as `stepped`); the replica looks every second whether it has
unfinished requests (`observe`). An engine that is busy and has not stepped for the timeout is
stalled, and stays so: the replica fails its streams over to other replicas and its health
check, so Ray replaces it (an engine that recovers after that is not trusted again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class StallWatchdog:
    """Busy without a step for `timeout_s` means stalled (pure logic; the clock is injected)."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self._progress = clock()  # the last step, or the last moment the engine was idle
        self.stalled_for: float | None = None  # how long it had not stepped when caught

    @property
    def stalled(self) -> bool:
        return self.stalled_for is not None

    def stepped(self) -> None:
        self._progress = self.clock()

    def observe(self, busy: bool) -> bool:
        """Record whether the engine has unfinished requests now; True once it is stalled."""
        now = self.clock()
        if not busy:
            self._progress = now
        elif self.stalled_for is None and now - self._progress > self.timeout_s:
            self.stalled_for = now - self._progress
        return self.stalled

    async def run(self, busy: Callable[[], bool], on_stall: Callable[[float], None],
                  period_s: float = 1.0) -> None:
        """Look every `period_s` until the engine stalls, then call `on_stall` once."""
        while not self.observe(busy()):
            await asyncio.sleep(min(period_s, self.timeout_s / 4))
        assert self.stalled_for is not None
        on_stall(self.stalled_for)
