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
    from pdserve.simulation.replicas import Pool, Replica

#: `slo_app`: the application-level `SLOAutoscalingPolicy` (P:D ratio, replica budget);
#: `slo`: the per-pool `pool_policy` (a model with `slo` and no application policy);
#: `ray_default`: Ray Serve's queue-length policy (`target_ongoing_requests`).
POLICIES = ("slo_app", "slo", "ray_default")
#: `report.SMOOTHED` (the load signals Ray averages), as `ReplicaSignals` names them.
SMOOTHED_FIELDS = ("queued_prefill_tokens", "kv_cache_usage", "running", "waiting")


@dataclass(frozen=True)
class ScalingAction:
    time_s: float
    pool: str  # role
    replicas_from: int
    replicas_to: int
    reason: str
    model: str = ""


class PoolScaler:
    """One autoscaled pool: its model's simulation, its Ray config, Ray's policy state, its
    target and recent reports."""

    def __init__(self, sim: Simulation, role: str, config: dict[str, Any], target: int) -> None:
        self.sim, self.role = sim, role
        self.config = AutoscalingConfig(**config)
        self.target = target
        self.policy_state: dict[str, Any] = {}
        self.reports: dict[str, deque[tuple[float, ReplicaSignals]]] = {}
        self.requests: deque[tuple[float, float]] = deque()
        self.next_report_s = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.sim.model.model_id, self.role)

    @property
    def pool(self) -> Pool:
        return self.sim.pools[self.role]

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
    """Steers the autoscaled pools of one or more models' simulations (on one clock: an app's
    models share its replica budget and its host) with `policy` (one of `POLICIES`)."""

    def __init__(self, sims: Simulation | list[Simulation], policy: str,
                 replica_budget: int | None = None, oversubscribe_cores: bool = False,
                 planner_profiles: dict[str, Profile] | None = None) -> None:
        """`planner_profiles`: each model's `planner.profile`, by model id (its slow loop runs
        with it)."""
        if policy not in POLICIES:
            raise ValueError(f"unknown autoscaling policy {policy!r}; known: "
                             f"{', '.join(POLICIES)}")
        self.sims = sims if isinstance(sims, list) else [sims]
        self.loop = self.sims[0].loop
        if any(sim.loop is not self.loop for sim in self.sims):
            raise ValueError("the models of one app are simulated on one event loop")
        self.policy, self.budget, self.oversubscribe = policy, replica_budget, oversubscribe_cores
        self.pools = {(sim.model.model_id, role): PoolScaler(sim, role, config.autoscaling_config,
                                                             len(sim.pools[role].replicas))
                      for sim in self.sims for role, config in sim.model.pools().items()
                      if config.autoscaling_config}
        profiles = planner_profiles or {}
        self.planners = {sim.model.model_id: (profiles[sim.model.model_id],
                                              sim.model.planner.interval_s)
                         for sim in self.sims
                         if sim.model.planner and sim.model.model_id in profiles}
        self.capacities: dict[str, EngineCapacity] = {}  # by replica
        self.floors = PlannerFloors(clock=lambda: self.loop.now)
        self.actions: list[ScalingAction] = []
        #: (time, (model, role), serving replicas, target) at every report: the timeline.
        self.timeline: list[tuple[float, tuple[str, str], int, int]] = []

    def start(self) -> None:
        self.loop.at(0.0, self._tick)

    def interval_s(self, scaler: PoolScaler) -> float | None:
        planner = self.planners.get(scaler.sim.model.model_id)
        return planner[1] if planner else None

    # -- reports ------------------------------------------------------------------------
    def _report(self, scaler: PoolScaler, now: float) -> None:
        pool, sim = scaler.pool, scaler.sim
        for replica in pool.replicas.values():
            load = LoadReport()
            load.kv_cache_usage = pool.kv_usage.get(replica.name, 0.0)
            load.num_running, load.num_waiting = _engine_counts(replica)
            capacity = self._capacity(scaler, replica.name)
            report = replica_report(
                replica.signals, load, sim.slo, self.budget,
                capacity_rps=capacity.rps(replica.signals, sim.slo) if capacity else None,
                node=0, engine_slots=sim.host_cores,
                planner_interval_s=self.interval_s(scaler),
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
        self.timeline.append((now, scaler.key, len(pool.replicas), scaler.target))

    def _capacity(self, scaler: PoolScaler, replica: str) -> EngineCapacity | None:
        """The replica's estimator, as its host builds it (`capacity_of`)."""
        planner = self.planners.get(scaler.sim.model.model_id)
        if planner is None:
            return None
        name = f"{scaler.sim.model.model_id}/{replica}"
        if name not in self.capacities:
            scheduler = scaler.sim.scheduler_config
            self.capacities[name] = EngineCapacity(
                planner[0], scaler.role, scheduler.max_num_batched_tokens,
                scheduler.max_num_seqs, scaler.sim.model.routing.local_prefill_below_tokens,
                planner[1], clock=lambda: self.loop.now)
        return self.capacities[name]

    # -- decisions ----------------------------------------------------------------------
    def _snapshot(self, scaler: PoolScaler) -> PoolSnapshot:
        """The pool as the policy sees it, its planner floor updated (slow loop)."""
        pool = scaler.pool
        signals = [scaler.signals(name) for name in pool.replicas]
        snapshot = PoolSnapshot(
            model=scaler.sim.model.model_id, role=scaler.role,  # type: ignore[arg-type]
            running=len(pool.replicas), target=scaler.target,
            min_replicas=scaler.config.min_replicas, max_replicas=scaler.config.max_replicas,
            replicas=tuple(s for s in signals if s is not None),
            requests=max(scaler.mean_requests(), float(len(pool.waiting))))
        self.floors.update(snapshot, self.interval_s(scaler))
        return self.floors.apply(snapshot)

    def _free_engine_slots(self, snapshots: dict[tuple[str, str], PoolSnapshot]) -> int | None:
        """Room on the simulated host (one node, every model's engines on it), as the policy
        counts it: every serving engine, fixed pools' included, less those still starting."""
        engines = [s for snap in snapshots.values() for s in snap.replicas]
        engines += [ReplicaSignals(node=0, engine_slots=sim.host_cores)
                    for sim in self.sims for role, pool in sim.pools.items()
                    if (sim.model.model_id, role) not in snapshots for _ in pool.replicas]
        starting = sum(len(pool.starting) for sim in self.sims for pool in sim.pools.values())
        return free_engine_slots(engines, starting)

    def _wanted(self) -> dict[tuple[str, str], tuple[float, str]]:
        """Each pool's replicas as the policy wants them, before Ray's delays and bounds."""
        if self.policy == "ray_default":
            out = {}
            for key, scaler in self.pools.items():
                ctx = SimpleNamespace(
                    current_num_replicas=len(scaler.pool.replicas),
                    target_num_replicas=scaler.target, total_num_requests=scaler.mean_requests(),
                    config=scaler.config, policy_state=scaler.policy_state)
                desired, _ = replica_queue_length_autoscaling_policy(ctx)
                out[key] = (desired, "ongoing_requests")
            return out
        snapshots = {key: self._snapshot(s) for key, s in self.pools.items()}
        targets = {sim.model.model_id: sim.slo for sim in self.sims}
        if self.policy == "slo_app":
            decisions = decide(Snapshot(tuple(snapshots.values()), targets, self.budget,
                                        self._free_engine_slots(snapshots),
                                        self.oversubscribe))
        else:
            decisions = {key: decide_pool(snap, targets[key[0]])
                         for key, snap in snapshots.items()}
        return {key: (d.replicas, d.reason) for key, d in decisions.items()}

    def _apply_ray(self, scaler: PoolScaler, desired: float, now: float) -> int:
        """What Ray makes of a policy's wish (`autoscaling_policy._apply_autoscaling_config`):
        from zero replicas with requests held, at least one at once (a handle reports its
        queue then); else the scaling factors, then the up/down delays (skipped while nothing
        serves); then the pool's bounds."""
        config = scaler.config
        pool = scaler.pool
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
        now = self.loop.now
        for scaler in self.pools.values():
            if now + 1e-9 >= scaler.next_report_s:
                self._report(scaler, now)
                scaler.next_report_s = now + scaler.config.metrics_interval_s
        for key, (desired, reason) in self._wanted().items():
            scaler = self.pools[key]
            final = self._apply_ray(scaler, desired, now)
            if final != scaler.target:
                self._scale(scaler, final, reason, now)
        # Ticks end with the run: every request of every model ended, or nothing left that
        # could move one on (no step, pull, arrival or start pending: a prompt the KV cache
        # cannot hold waits forever, and is reported failed).
        if not all(sim.all_done for sim in self.sims) and self.loop.pending():
            self.loop.after(CONTROL_LOOP_INTERVAL_S, self._tick)

    def _scale(self, scaler: PoolScaler, replicas: int, reason: str, now: float) -> None:
        self.actions.append(ScalingAction(now, scaler.role, scaler.target, replicas, reason,
                                          scaler.sim.model.model_id))
        for _ in range(replicas - scaler.target):
            scaler.sim.start_replica(scaler.role)
        for _ in range(scaler.target - replicas):
            scaler.sim.stop_replica(scaler.role)
        scaler.target = replicas


def _engine_counts(replica: Replica) -> tuple[int, int]:
    """(running, waiting) requests in the replica's scheduler, as vLLM's stats report them."""
    scheduler = replica.engine.scheduler
    return len(scheduler.running), len(scheduler.waiting)
