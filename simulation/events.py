"""A discrete-event loop: callbacks at simulated times, in time order, ties in the order they
were scheduled (so a run is deterministic)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[..., Any], tuple]] = []
        self._seq = 0

    def at(self, time: float, callback: Callable[..., Any], *args: Any) -> None:
        if time < self.now:
            raise ValueError(f"event at {time} is before now ({self.now})")
        heapq.heappush(self._queue, (time, self._seq, callback, args))
        self._seq += 1

    def after(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + delay, callback, *args)

    def run(self, until: float | None = None) -> None:
        """Run events in order until none is left (or the next is after `until`)."""
        queue = self._queue
        while queue:
            if until is not None and queue[0][0] > until:
                self.now = until
                return
            self.now, _, callback, args = heapq.heappop(queue)
            callback(*args)

    def pending(self) -> int:
        return len(self._queue)
