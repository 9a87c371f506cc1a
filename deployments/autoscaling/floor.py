"""The autoscaler's slow loop: each pool's planner floor (`config.planner.PlannerFloor`).

Every `interval_s` (what the pool's replicas report), a pool's floor becomes the requests per
second its replicas saw over what one engine of it carries within the SLO for the lengths they
saw (each replica's `capacity_rps`, the planner's closed forms): ceil(Σ arrivals / mean
capacity). Between recomputations the floor holds, so a lull of a few seconds does not undo it
and the fast loop (`decision.py`, every tick) only ever adds to it; a pool whose replicas give
no estimate when it is due has no floor. Pure: the clock is given.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from pdserve.deployments.autoscaling.decision import PoolSnapshot


@dataclass(frozen=True)
class Floor:
    replicas: int
    arrivals_per_s: float
    capacity_rps: float
    at: float  # clock time it was computed


class PlannerFloors:
    """The latest floor of every pool whose replicas report a capacity."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.floors: dict[tuple[str, str], Floor] = {}

    def update(self, pool: PoolSnapshot, interval_s: float | None) -> Floor | None:
        """Recompute `pool`'s floor if `interval_s` passed since the last one (returns the new
        floor then, else None)."""
        key = pool.key
        now = self.clock()
        last = self.floors.get(key)
        if interval_s is None:
            self.floors.pop(key, None)  # the model's planner was turned off
            return None
        if last is not None and now - last.at < interval_s:
            return None
        capacities = [r.capacity_rps for r in pool.replicas if r.capacity_rps]
        if not capacities:  # no estimate (none yet, or the targets out of reach): no floor
            self.floors.pop(key, None)
            return None
        capacity = statistics.fmean(capacities)
        arrivals = sum(r.arrivals_per_s for r in pool.replicas)
        floor = Floor(math.ceil(arrivals / capacity - 1e-9), arrivals, capacity, now)
        self.floors[key] = floor
        return floor

    def apply(self, pool: PoolSnapshot) -> PoolSnapshot:
        floor = self.floors.get(pool.key)
        return replace(pool, floor=floor.replicas) if floor is not None else pool
