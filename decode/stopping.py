"""Notice that Ray Serve is stopping this replica, so it can drain before it goes.

Ray Serve gives user code no signal before it stops a replica (scale-down, a rolling update):
it takes the replica out of the running set it broadcasts to every router, waits up to
`graceful_shutdown_timeout_s` for ongoing requests, then calls `__del__`. The broadcast is the
one public trace: a generating replica holds a handle to its own pool, and once its own id
leaves the set its router reports (`routing/pool_state.py`, `members`) while it still runs,
Serve is stopping it, and it moves its live streams, with their KV, to the replicas that stay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection


async def wait_until_removed(members: Callable[[], Collection[str]], me: str, period_s: float,
                             confirmations: int = 2) -> None:
    """Return once `me` was in the pool's running set and then missing from it at
    `confirmations` consecutive looks, `period_s` apart (one look could race a restart of the
    router's view)."""
    seen = False
    missing = 0
    while True:
        current = members()
        if me in current:
            seen, missing = True, 0
        elif seen and current:
            missing += 1
            if missing >= confirmations:
                return
        await asyncio.sleep(period_s)
