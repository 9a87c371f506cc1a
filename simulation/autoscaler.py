"""Autoscaling on simulated time: the policy a config runs, applied as Ray Serve applies it.

What is imported, not re-implemented: the project's SLO decision (`deployments.autoscaling.
decision.decide` over every pool, as `SLOAutoscalingPolicy`; `decide_pool` per pool, as
`pool_policy`), fed the reports engine hosts send (`deployments.engine.reports.replica_report`
over each replica's `ReplicaSLOSignals`, on the simulated clock); Ray Serve's default policy
(`replica_queue_length_autoscaling_policy`); and what Ray does on top of any policy: its scaling
factors and up/down delays (`_apply_scaling_factors`, `_apply_delay_logic`: private, pinned by
`tests/unit/test_sim_autoscaler.py`), the cold-start path from zero, min/max bounds.

The application policy's slow loop runs too (`floor.PlannerFloors` on the simulated clock,
each replica's `capacity_rps` from `engine.capacity.EngineCapacity` over the model's
`planner.profile`), and its bound by physical room: the simulated host's `host_cores` (one
engine per core, as CPU engines are pinned), unless the app sets `oversubscribe_cores`.

What is modelled: the controller decides every `CONTROL_LOOP_INTERVAL_S` (Ray's); replicas
report every `metrics_interval_s`; the load signals Ray averages over `look_back_period_s`
(`report.SMOOTHED`, and requests per pool: ongoing at replicas plus held at the handle) are
averaged over the reports in that window, latencies are the latest report's. A replica Ray
starts serves after the start-up time; Ray stops a starting replica first, else the newest
serving one, which drains.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ray.serve._private.constants import CONTROL_LOOP_INTERVAL_S
from ray.serve.autoscaling_policy import (
    _apply_delay_logic,
    _apply_scaling_factors,
    replica_queue_length_autoscaling_policy,
)
from ray.serve.config import AutoscalingConfig

from pdserve.deployments.autoscaling.decision import PoolSnapshot, Snapshot, decide, decide_pool
from pdserve.deployments.autoscaling.floor import PlannerFloors
from pdserve.deployments.autoscaling.report import ReplicaSignals
from pdserve.deployments.autoscaling.room import free_engine_slots
from pdserve.deployments.engine.capacity import EngineCapacity
from pdserve.deployments.engine.reports import LoadReport, replica_report
from pdserve.simulation.profile_file import Profile

if TYPE_CHECKING:
    from pdserve.simulation.graph import Simulation
    from pdserve.simulation.replicas import Replica

#: `slo_app`: the application-level `SLOAutoscalingPolicy` (P:D ratio, replica budget);
#: `slo`: the per-pool `pool_policy` (a model with `slo` and no application policy);
#: `ray_default`: Ray Serve's queue-length policy (`target_ongoing_requests`).
POLICIES = ("slo_app", "slo", "ray_default")
#: `report.SMOOTHED` (the load signals Ray averages), as `ReplicaSignals` names them.
SMOOTHED_FIELDS = ("queued_prefill_tokens", "kv_cache_usage", "running", "waiting")


@dataclass(frozen=True)
class ScalingAction:
    time_s: float
    pool: str
    replicas_from: int
    replicas_to: int
    reason: str


class PoolScaler:
    """One autoscaled pool: its Ray config, Ray's policy state, its target and recent reports."""

    def __init__(self, role: str, config: dict[str, Any], target: int) -> None:
        self.role = role
        self.config = AutoscalingConfig(**config)
        self.target = target
        self.policy_state: dict[str, Any] = {}
        self.reports: dict[str, deque[tuple[float, ReplicaSignals]]] = {}
        self.requests: deque[tuple[float, float]] = deque()
        self.next_report_s = 0.0

    def window(self, now: float) -> float:
        return now - self.config.look_back_period_s

    def signals(self, name: str) -> ReplicaSignals | None:
        """A replica's latest report, its load signals averaged over the look-back window."""
        series = self.reports.get(name)
        if not series:
            return None
        latest = series[-1][1]
        means = {f: sum(getattr(s, f) for _, s in series) / len(series) for f in SMOOTHED_FIELDS}
        return replace(latest, **means)

    def mean_requests(self) -> float:
        return sum(v for _, v in self.requests) / len(self.requests) if self.requests else 0.0


class Autoscaler:
    """Steers the simulation's autoscaled pools with `policy` (one of `POLICIES`)."""

    def __init__(self, sim: Simulation, policy: str, configs: dict[str, dict[str, Any]],
                 replica_budget: int | None = None, oversubscribe_cores: bool = False,
                 planner_profile: Profile | None = None) -> None:
        """`planner_profile`: the model's `planner.profile` (the slow loop runs with it)."""
        if policy not in POLICIES:
            raise ValueError(f"unknown autoscaling policy {policy!r}; known: "
                             f"{', '.join(POLICIES)}")
        self.sim, self.policy, self.budget = sim, policy, replica_budget
        self.oversubscribe = oversubscribe_cores
        self.pools = {role: PoolScaler(role, config, len(sim.pools[role].replicas))
                      for role, config in configs.items()}
        planner = sim.model.planner
        self.planner_interval_s = planner.interval_s if planner and planner_profile else None
        self.planner_profile = planner_profile if self.planner_interval_s else None
        self.capacities: dict[str, EngineCapacity] = {}  # by replica
        self.floors = PlannerFloors(clock=lambda: sim.loop.now)
        self.actions: list[ScalingAction] = []
        #: (time, role, serving replicas, target) at every report: the replica timeline.
        self.timeline: list[tuple[float, str, int, int]] = []

    def start(self) -> None:
        self.sim.loop.at(0.0, self._tick)

    # -- reports ------------------------------------------------------------------------
    def _report(self, scaler: PoolScaler, now: float) -> None:
        pool = self.sim.pools[scaler.role]
        slo = self.sim.slo
        for replica in pool.replicas.values():
            load = LoadReport()
            load.kv_cache_usage = pool.kv_usage.get(replica.name, 0.0)
            load.num_running, load.num_waiting = _engine_counts(replica)
            capacity = self._capacity(scaler.role, replica.name)
            report = replica_report(
                replica.signals, load, slo, self.budget,
                capacity_rps=capacity.rps(replica.signals, slo) if capacity else None,
                node=0, engine_slots=self.sim.host_cores,
                planner_interval_s=self.planner_interval_s,
                oversubscribe_cores=self.oversubscribe)
            series = scaler.reports.setdefault(replica.name, deque())
            series.append((now, report.signals))
            while series and series[0][0] < scaler.window(now):
                series.popleft()
        for name in [n for n in scaler.reports if n not in pool.replicas]:
            del scaler.reports[name]
        ongoing = sum(r.ongoing for r in pool.replicas.values()) + len(pool.waiting)
        scaler.requests.append((now, float(ongoing)))
        while scaler.requests and scaler.requests[0][0] < scaler.window(now):
            scaler.requests.popleft()
        self.timeline.append((now, scaler.role, len(pool.replicas), scaler.target))

    def _capacity(self, role: str, replica: str) -> EngineCapacity | None:
        """The replica's estimator, as its host builds it (`capacity_of`)."""
        if self.planner_profile is None or self.planner_interval_s is None:
            return None
        if replica not in self.capacities:
            scheduler = self.sim.scheduler_config
            self.capacities[replica] = EngineCapacity(
                self.planner_profile, role, scheduler.max_num_batched_tokens,
                scheduler.max_num_seqs, self.sim.model.routing.local_prefill_below_tokens,
                self.planner_interval_s, clock=lambda: self.sim.loop.now)
        return self.capacities[replica]

    # -- decisions ----------------------------------------------------------------------
    def _snapshot(self, scaler: PoolScaler) -> PoolSnapshot:
        """The pool as the policy sees it, its planner floor updated (slow loop)."""
        pool = self.sim.pools[scaler.role]
        signals = [scaler.signals(name) for name in pool.replicas]
        snapshot = PoolSnapshot(
            model=self.sim.model.model_id, role=scaler.role,  # type: ignore[arg-type]
            running=len(pool.replicas), target=scaler.target,
            min_replicas=scaler.config.min_replicas, max_replicas=scaler.config.max_replicas,
            replicas=tuple(s for s in signals if s is not None),
            requests=max(scaler.mean_requests(), float(len(pool.waiting))))
        self.floors.update(snapshot, self.planner_interval_s)
        return self.floors.apply(snapshot)

    def _free_engine_slots(self, snapshots: dict[str, PoolSnapshot]) -> int | None:
        """Room on the simulated host (one node), as the policy counts it: every serving
        engine, fixed pools' included, less the replicas still starting."""
        engines = [s for snap in snapshots.values() for s in snap.replicas]
        engines += [ReplicaSignals(node=0, engine_slots=self.sim.host_cores)
                    for role, pool in self.sim.pools.items() if role not in snapshots
                    for _ in pool.replicas]
        starting = sum(len(pool.starting) for pool in self.sim.pools.values())
        return free_engine_slots(engines, starting)

    def _wanted(self) -> dict[str, tuple[float, str]]:
        """Each pool's replicas as the policy wants them, before Ray's delays and bounds."""
        if self.policy == "ray_default":
            out = {}
            for role, scaler in self.pools.items():
                ctx = SimpleNamespace(
                    current_num_replicas=len(self.sim.pools[role].replicas),
                    target_num_replicas=scaler.target, total_num_requests=scaler.mean_requests(),
                    config=scaler.config, policy_state=scaler.policy_state)
                desired, _ = replica_queue_length_autoscaling_policy(ctx)
                out[role] = (desired, "ongoing_requests")
            return out
        snapshots = {role: self._snapshot(s) for role, s in self.pools.items()}
        targets = {self.sim.model.model_id: self.sim.slo}
        if self.policy == "slo_app":
            decisions = decide(Snapshot(tuple(snapshots.values()), targets, self.budget,
                                        self._free_engine_slots(snapshots),
                                        self.oversubscribe))
            by_role = {role: decisions[snap.key] for role, snap in snapshots.items()}
        else:
            by_role = {role: decide_pool(snap, self.sim.slo) for role, snap in snapshots.items()}
        return {role: (d.replicas, d.reason) for role, d in by_role.items()}

    def _apply_ray(self, scaler: PoolScaler, desired: float, now: float) -> int:
        """What Ray makes of a policy's wish (`autoscaling_policy._apply_autoscaling_config`):
        from zero replicas with requests held, at least one at once (a handle reports its
        queue then); else the scaling factors, then the up/down delays (skipped while nothing
        serves); then the pool's bounds."""
        config = scaler.config
        pool = self.sim.pools[scaler.role]
        current = len(pool.replicas)
        if current == 0 and (pool.waiting or scaler.mean_requests() > 0):
            final = max(math.ceil(config.get_upscaling_factor()), scaler.target)
        else:
            final = _apply_scaling_factors(desired, current, config)
            if not (current == 0 and final > 0):
                final, scaler.policy_state = _apply_delay_logic(
                    max(0, final), scaler.target, config, scaler.policy_state, _now=now)
        return max(config.min_replicas, min(config.max_replicas, int(final)))

    def _tick(self) -> None:
        now = self.sim.loop.now
        for scaler in self.pools.values():
            if now + 1e-9 >= scaler.next_report_s:
                self._report(scaler, now)
                scaler.next_report_s = now + scaler.config.metrics_interval_s
        for role, (desired, reason) in self._wanted().items():
            scaler = self.pools[role]
            final = self._apply_ray(scaler, desired, now)
            if final != scaler.target:
                self._scale(scaler, final, reason, now)
        # Ticks end with the run: every request ended, or nothing left that could move one on
        # (no step, pull, arrival or start pending: a prompt the KV cache cannot hold waits
        # forever, and is reported failed).
        if not self.sim.all_done and self.sim.loop.pending():
            self.sim.loop.after(CONTROL_LOOP_INTERVAL_S, self._tick)

    def _scale(self, scaler: PoolScaler, replicas: int, reason: str, now: float) -> None:
        self.actions.append(ScalingAction(now, scaler.role, scaler.target, replicas, reason))
        for _ in range(replicas - scaler.target):
            self.sim.start_replica(scaler.role)
        for _ in range(scaler.target - replicas):
            self.sim.stop_replica(scaler.role)
        scaler.target = replicas


def _engine_counts(replica: Replica) -> tuple[int, int]:
    """(running, waiting) requests in the replica's scheduler, as vLLM's stats report them."""
    scheduler = replica.engine.scheduler
    return len(scheduler.running), len(scheduler.waiting)
