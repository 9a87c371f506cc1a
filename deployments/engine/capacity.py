"""What one engine of this replica's pool carries within its model's SLO, for the load this
replica sees: the planner floor's input (`config.planner.PlannerFloor`), estimated by the
planner's own closed forms (`simulation.estimates.engine_capacity`) over the model's profile.

Recomputed at most every `interval_s` (the slow loop's period), or at once when the targets
change. The estimate (tens of milliseconds) runs off the replica's event loop, which streams
outputs: the host takes the inputs on the loop (`due`, `inputs`) and computes in a thread
(`compute`); a failed estimate is logged and leaves none (the floor then lapses), never a
failed report.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pdserve.deployments.autoscaling.signals import ReplicaSLOSignals
from pdserve.deployments.config.binding import EngineBinding
from pdserve.deployments.config.slo import SLOTargets
from pdserve.simulation.estimates import engine_capacity
from pdserve.simulation.profile_file import Profile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CapacityInputs:
    prompts: tuple[int, ...]  # the prompt lengths this replica saw over the window
    output: float  # mean output tokens of its finished requests
    slo: SLOTargets


class EngineCapacity:
    """Requests/s one engine of a `role` pool carries, from `profile` and the engine's own
    scheduler limits (`chunk`: `max_num_batched_tokens`)."""

    def __init__(self, profile: Profile | dict[str, Any], role: str, chunk: int,
                 max_num_seqs: int, local_below: int, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.profile = profile if isinstance(profile, Profile) else Profile.model_validate(
            profile)
        self.role, self.chunk, self.max_num_seqs = role, chunk, max_num_seqs
        self.local_below, self.interval_s, self.clock = local_below, interval_s, clock
        self.value: float | None = None
        self.computed_at: float | None = None
        self.slo: SLOTargets | None = None  # the targets of the last estimate

    def due(self, slo: SLOTargets) -> bool:
        return (self.computed_at is None or slo != self.slo
                or self.clock() - self.computed_at >= self.interval_s)

    def inputs(self, signals: ReplicaSLOSignals, slo: SLOTargets) -> CapacityInputs | None:
        """What the estimate needs, taken now (None: nothing seen yet; look again later)."""
        prompts = tuple(p for p in signals.recent_prompts() if p >= 1)
        if not prompts:
            return None
        return CapacityInputs(prompts, signals.mean_output_tokens() or 1.0, slo)

    def compute(self, inputs: CapacityInputs) -> float | None:
        """The estimate (None when the targets cannot be met even one request at a time: no
        count of engines helps then; or when it failed). Thread-safe: reads `inputs` only."""
        try:
            rps = engine_capacity(self.profile, self.role, inputs.prompts, inputs.output,
                                  self.chunk, self.max_num_seqs, self.local_below,
                                  inputs.slo.ttft_ms / 1000, inputs.slo.itl_ms / 1000)
        except Exception as exc:  # a report must never fail for its estimate
            logger.warning("capacity estimate failed (%s: %s); no planner floor from this "
                           "replica until the next one", type(exc).__name__, exc)
            rps = 0.0
        return rps if 0 < rps < math.inf else None

    def record(self, value: float | None, slo: SLOTargets) -> float | None:
        self.value, self.slo, self.computed_at = value, slo, self.clock()
        return value

    async def current(self, signals: ReplicaSLOSignals, slo: SLOTargets) -> float | None:
        """The latest estimate, recomputed when due in a thread (it takes tens of milliseconds
        the caller's loop must spend streaming)."""
        if self.due(slo):
            inputs = self.inputs(signals, slo)
            if inputs is not None:
                self.record(await asyncio.to_thread(self.compute, inputs), inputs.slo)
        return self.value

    def rps(self, signals: ReplicaSLOSignals, slo: SLOTargets) -> float | None:
        """The latest estimate, recomputed here when due (the simulator's synchronous path)."""
        if not self.due(slo):
            return self.value
        inputs = self.inputs(signals, slo)
        if inputs is None:
            return self.value
        return self.record(self.compute(inputs), slo)


def capacity_of(binding: EngineBinding, scheduler: Any) -> EngineCapacity | None:
    """The estimator of a replica bound with a planner profile (`scheduler`: its engine's
    `vllm_config.scheduler_config`); None without one."""
    planner = binding.model.planner
    if binding.capacity_profile is None or planner is None:
        return None
    return EngineCapacity(binding.capacity_profile, binding.role,
                          scheduler.max_num_batched_tokens, scheduler.max_num_seqs,
                          binding.model.routing.local_prefill_below_tokens, planner.interval_s)
