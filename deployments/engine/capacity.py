"""What one engine of this replica's pool carries within its model's SLO, for the load this
replica sees: the planner floor's input (`config.planner.PlannerFloor`), estimated by the
planner's own closed forms (`simulation.estimates.engine_capacity`) over the model's profile.

Recomputed at most every `interval_s` (the slow loop's period): the estimate is a bisection
over closed forms, milliseconds, but the report it feeds is sent every second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from pdserve.deployments.autoscaling.signals import ReplicaSLOSignals
from pdserve.deployments.config.binding import EngineBinding
from pdserve.deployments.config.slo import SLOTargets
from pdserve.simulation.estimates import engine_capacity
from pdserve.simulation.profile_file import Profile


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

    def rps(self, signals: ReplicaSLOSignals, slo: SLOTargets) -> float | None:
        """The latest estimate (None until this replica saw a request, or when the targets
        cannot be met even one request at a time: no count of engines helps then)."""
        now = self.clock()
        if self.computed_at is not None and now - self.computed_at < self.interval_s:
            return self.value
        prompts = tuple(signals.recent_prompts())
        if not prompts:
            return self.value  # nothing seen yet: keep the last estimate, try again next time
        output = signals.mean_output_tokens() or 1.0
        rps = engine_capacity(self.profile, self.role, prompts, output, self.chunk,
                              self.max_num_seqs, self.local_below, slo.ttft_ms / 1000,
                              slo.itl_ms / 1000)
        self.value = rps if 0 < rps < math.inf else None
        self.computed_at = now
        return self.value


def capacity_of(binding: EngineBinding, scheduler: Any) -> EngineCapacity | None:
    """The estimator of a replica bound with a planner profile (`scheduler`: its engine's
    `vllm_config.scheduler_config`); None without one."""
    planner = binding.model.planner
    if binding.capacity_profile is None or planner is None:
        return None
    return EngineCapacity(binding.capacity_profile, binding.role,
                          scheduler.max_num_batched_tokens, scheduler.max_num_seqs,
                          binding.model.routing.local_prefill_below_tokens, planner.interval_s)
