"""Who waits for a stream: the ingress replica (a named Ray actor) that called the pool.

Ray does not cancel the streaming calls a replica made when that replica dies (measured: after
`kill -9` of an ingress replica, the decode engines ran its requests to their last token, for
nobody). So every request names its caller, and each engine replica checks, every
`health.caller_check_period_s` while it streams for anyone, that its callers still exist (a
named-actor lookup in Ray's GCS, about a millisecond: `actors.py`); the streams of a caller that
is gone end, which aborts their requests and frees their KV.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """A named Ray actor (Ray Serve names every replica actor) in its namespace. Plain data:
    the orchestrator that sends it stays free of Ray (`actors.py` does the lookups)."""

    name: str
    namespace: str


class CallerGone(RuntimeError):
    """Ends a stream whose caller no longer exists."""


async def watch_callers(
    callers: Callable[[], Collection[Caller]],
    on_gone: Callable[[Caller], None],
    period_s: float,
    alive: Callable[[Caller], bool],
) -> None:
    """Every `period_s`, look up each caller of a live stream; call `on_gone` for those that
    no longer exist. Runs until cancelled."""
    while True:
        await asyncio.sleep(period_s)
        for caller in list(callers()):
            if not await asyncio.to_thread(alive, caller):
                on_gone(caller)
