"""Ray Serve autoscaling policies that run pdserve's SLO decision (`decision.py`).

`SLOAutoscalingPolicy` is the application-level policy (`applications[].autoscaling_policy`
in the YAML): one call sees every pool of every model, so a model's prefill and decode pools
move together and all models share `replica_budget`. `pool_policy` is the same rule for one
pool alone, the per-deployment default (what `serve.run` in Python can use).

The application-level policy also runs the slow loop (`floor.py`: each pool's planner floor
from the load its replicas saw, for models with `planner`) and bounds growth by the nodes'
physical room (`room.py`: CPU engines pinned to cores; alive nodes from `ray.nodes()`).

Both run in the Serve controller, many times a second. They read what replicas pushed with
`record_autoscaling_stats` (`ReplicaReport`, the latest value per replica), including the
model's live SLO targets, so a `user_config` change retunes them without restarting an engine.
Ray applies its `upscale_delay_s`/`downscale_delay_s`, factors and `min/max_replicas` on top.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pdserve.deployments.autoscaling.decision import (
    HOLD,
    Decision,
    PoolSnapshot,
    Snapshot,
    decide,
    decide_pool,
)
from pdserve.deployments.autoscaling.floor import Floor, PlannerFloors
from pdserve.deployments.autoscaling.report import (
    SMOOTHED,
    ReplicaReport,
    ReplicaSignals,
    node_key,
)
from pdserve.deployments.autoscaling.room import free_engine_slots
from pdserve.deployments.config.pools import GENERATING_ROLES, PoolName
from pdserve.deployments.config.slo import SLOTargets

logger = logging.getLogger("ray.serve")
#: How long the policy trusts its list of alive nodes (`ray.nodes()` is a GCS call).
NODES_TTL_S = 30.0


def pool_of(deployment_name: str) -> PoolName | None:
    """The generating pool a deployment is (None for the ingress, embedding pools, others)."""
    name = PoolName.parse(deployment_name)
    return name if name is not None and name.role in GENERATING_ROLES else None


def latest_values(ctx: Any) -> dict[Any, dict[str, float]]:
    """Each running replica's report: {replica_id: {metric: value}} (latest value, or the
    look-back mean for the load signals in `SMOOTHED`)."""
    per_replica: dict[Any, dict[str, float]] = {r: {} for r in ctx.running_replicas}
    for name, series_by_replica in (ctx.raw_metrics or {}).items():
        for replica, series in series_by_replica.items():
            if replica in per_replica and series:
                per_replica[replica][name] = max(series, key=lambda s: s.timestamp).value
    for name, by_replica in (ctx.aggregated_metrics or {}).items():
        for replica, value in by_replica.items():
            if replica in per_replica and (name in SMOOTHED or name not in per_replica[replica]):
                per_replica[replica][name] = value
    return per_replica


def read_reports(ctx: Any) -> list[ReplicaReport]:
    """Every running replica's report (a report that does not decode is logged and skipped:
    the policy loop must keep running)."""
    reports = []
    for replica, values in latest_values(ctx).items():
        try:
            reports.append(ReplicaReport.decode(values))
        except (ValueError, TypeError, OverflowError) as exc:
            logger.warning("pdserve autoscaling: bad report from %s: %s", replica, exc)
    return reports


def pool_snapshot(pool: PoolName, ctx: Any, reports: list[ReplicaReport]) -> PoolSnapshot:
    return PoolSnapshot(
        model=pool.model,
        role=pool.role,
        running=int(ctx.current_num_replicas),
        target=int(ctx.target_num_replicas),
        min_replicas=int(ctx.capacity_adjusted_min_replicas),
        max_replicas=int(ctx.capacity_adjusted_max_replicas),
        replicas=tuple(r.signals for r in reports),
        requests=float(ctx.total_num_requests),
    )


class DecisionMetrics:
    """`pdserve_pool_replicas`, `pdserve_autoscale_decisions_total`, `pdserve_autoscale_pressure`
    (Ray metrics from the controller process; a decision counts when the policy's wanted
    replica count for a pool changes, not on every tick)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        self.replicas = Gauge("pdserve_pool_replicas",
                              description="Engine replicas per pool: running, target (Ray's), "
                              "wanted (the SLO policy's).", tag_keys=("model", "pool", "kind"))
        self.decisions = Counter("pdserve_autoscale_decisions_total",
                                 description="SLO policy changes of a pool's wanted replicas.",
                                 tag_keys=("model", "pool", "direction", "reason"))
        self.pressure = Gauge("pdserve_autoscale_pressure",
                              description="Each SLO signal the policy used, as a fraction of "
                              "its target (1 = at target).", tag_keys=("model", "pool", "signal"))
        self.beyond = Counter("pdserve_autoscale_beyond_physical_total",
                              description="Replicas the SLO policy wanted past the nodes' "
                              "physical engine slots: skipped, or added anyway "
                              "(oversubscribe_cores).", tag_keys=("model", "pool", "action"))
        self.last: dict[tuple[str, str], int] = {}

    def record(self, pool: PoolSnapshot, decision: Decision) -> None:
        tags = {"model": pool.model, "pool": pool.role}
        self.replicas.set(pool.running, tags={**tags, "kind": "running"})
        self.replicas.set(pool.target, tags={**tags, "kind": "target"})
        self.replicas.set(decision.replicas, tags={**tags, "kind": "wanted"})
        self.replicas.set(pool.floor, tags={**tags, "kind": "floor"})
        for signal, value in decision.signals.items():
            self.pressure.set(value, tags={**tags, "signal": signal})
        previous = self.last.get(pool.key)
        self.last[pool.key] = decision.replicas
        if decision.direction != HOLD and previous != decision.replicas:
            self.decisions.inc(1, tags={**tags, "direction": decision.direction,
                                        "reason": decision.reason})
            logger.info("pdserve autoscaling %s/%s: %d -> %d (%s, pressure %.2f, %s)",
                        pool.model, pool.role, pool.target, decision.replicas, decision.reason,
                        decision.pressure, decision.signals)


def beyond_action(decision: Decision) -> str:
    return "skipped" if decision.reason == "no_physical_capacity" else "added"


def _log_beyond(pool: PoolSnapshot, decision: Decision) -> None:
    logger.warning("pdserve autoscaling %s/%s: %d replica(s) wanted beyond the nodes' "
                   "physical engine slots: %s", pool.model, pool.role, decision.beyond_physical,
                   "skipped (no_physical_capacity)" if beyond_action(decision) == "skipped"
                   else "added anyway (oversubscribe_cores), sharing cores")


def _log_floor(pool: PoolSnapshot, before: int, floor: Floor) -> None:
    logger.info("pdserve autoscaling %s/%s: planner floor %d -> %d (%.2f req/s offered, "
                "%.2f req/s per engine within the SLO)", pool.model, pool.role, before,
                floor.replicas, floor.arrivals_per_s, floor.capacity_rps)


def _metrics() -> DecisionMetrics | None:
    try:
        return DecisionMetrics()
    except Exception as exc:  # metrics must never stop the controller's policy loop
        logger.warning("pdserve autoscaling metrics unavailable: %s", exc)
        return None


class SLOAutoscalingPolicy:
    """Application-level policy: `autoscaling_policy: {policy_function:
    pdserve.deployments.autoscaling.policy:SLOAutoscalingPolicy}`."""

    def __init__(self) -> None:
        self.targets: dict[str, SLOTargets] = {}  # last targets each model's replicas reported
        self.budget: int | None = None
        self.metrics = _metrics()
        self.floors = PlannerFloors()
        self._nodes: tuple[float, dict[int, int] | None] | None = None  # (read at, alive nodes)
        self._beyond: dict[tuple[str, str], int] = {}  # last reported growth past the room

    def snapshot(self, contexts: dict[Any, Any], room: bool = True
                 ) -> tuple[Snapshot, dict[tuple[str, str], Any]]:
        """Every pool as the decision sees it, planner floors applied; with `room`, the nodes'
        free engine slots (the app-level policy's bound)."""
        pools: list[PoolSnapshot] = []
        ids: dict[tuple[str, str], Any] = {}
        engines: list[ReplicaSignals] = []  # every engine pool's, embedding pools included
        starting, oversubscribe, fixed = 0, False, 0
        for deployment_id, ctx in contexts.items():
            name = PoolName.parse(ctx.deployment_name)
            if name is None:
                continue
            reports = read_reports(ctx)
            engines += [r.signals for r in reports]
            starting += max(0, int(ctx.target_num_replicas) - int(ctx.current_num_replicas))
            oversubscribe |= any(r.oversubscribe_cores for r in reports)
            fixed = max([fixed, *(r.fixed_engines for r in reports)])
            if name.role not in GENERATING_ROLES:  # an embedding pool: counted for room only
                continue
            for report in reports:
                self._remember(name.model, report)
            pool = pool_snapshot(name, ctx, reports)
            interval = next((r.planner_interval_s for r in reports if r.planner_interval_s),
                            None)
            before = self.floors.apply(pool).floor
            floor = self.floors.update(pool, interval)
            if floor is not None and floor.replicas != before:
                _log_floor(pool, before, floor)
            pools.append(self.floors.apply(pool))
            ids[(name.model, name.role)] = deployment_id
        free = None
        if room and any(e.engine_slots is not None for e in engines):
            alive = self._alive_nodes()
            if alive is not None:
                free = free_engine_slots(engines, starting, alive, fixed)
        return Snapshot(pools=tuple(pools), targets=dict(self.targets),
                        replica_budget=self.budget, free_engine_slots=free,
                        oversubscribe=oversubscribe), ids

    def _alive_nodes(self) -> dict[int, int] | None:
        """{node key: CPUs} of the cluster's alive nodes (cached `NODES_TTL_S`); None when
        Ray cannot say (then growth is not bounded by physical room)."""
        now = time.monotonic()
        if self._nodes is None or now - self._nodes[0] > NODES_TTL_S:
            try:
                import ray

                nodes = {node_key(n["NodeID"]): int(n.get("Resources", {}).get("CPU", 0))
                         for n in ray.nodes() if n.get("Alive")}
            except Exception as exc:  # the policy loop must keep running
                logger.warning("pdserve autoscaling: alive nodes unknown: %s", exc)
                nodes = None
            self._nodes = (now, nodes)
        return self._nodes[1]

    def _remember(self, model: str, report: ReplicaReport) -> None:
        """Keep the latest targets and budget replicas report (logged when they change)."""
        if report.targets is not None and report.targets != self.targets.get(model):
            logger.info("pdserve autoscaling %s: targets %r", model, report.targets)
            self.targets[model] = report.targets
        if report.replica_budget is not None:
            self.budget = report.replica_budget

    def __call__(self, contexts: dict[Any, Any]) -> tuple[dict[Any, int], dict[Any, dict]]:
        snapshot, ids = self.snapshot(contexts)
        decisions = decide(snapshot)
        by_key = {pool.key: pool for pool in snapshot.pools}
        out: dict[Any, int] = {}
        state: dict[Any, dict] = {}
        for key, decision in decisions.items():
            out[ids[key]] = decision.replicas
            state[ids[key]] = {"pdserve_reason": decision.reason}
            self._report_beyond(by_key[key], decision)
            if self.metrics is not None:
                self.metrics.record(by_key[key], decision)
        return out, state

    def _report_beyond(self, pool: PoolSnapshot, decision: Decision) -> None:
        """Growth past the nodes' room, logged and counted when it changes (not every tick)."""
        beyond = decision.beyond_physical
        if beyond and beyond != self._beyond.get(pool.key, 0):
            _log_beyond(pool, decision)
            if self.metrics is not None:
                self.metrics.beyond.inc(beyond, tags={"model": pool.model, "pool": pool.role,
                                                      "action": beyond_action(decision)})
        self._beyond[pool.key] = beyond


_pool_policy_state: SLOAutoscalingPolicy | None = None


def pool_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """Per-deployment policy (`autoscaling_config.policy`): the same rule for one pool, without
    the P:D ratio and the shared budget (those need the application-level policy)."""
    global _pool_policy_state
    name = pool_of(ctx.deployment_name)
    if name is None:
        return ctx.target_num_replicas, {}
    if _pool_policy_state is None:  # remembers each model's reported targets and metrics
        _pool_policy_state = SLOAutoscalingPolicy()
    snapshot, _ = _pool_policy_state.snapshot({name: ctx}, room=False)
    (pool,) = snapshot.pools
    decision = decide_pool(pool, snapshot.targets.get(name.model, SLOTargets()))
    if _pool_policy_state.metrics is not None:
        _pool_policy_state.metrics.record(pool, decision)
    return decision.replicas, {"pdserve_reason": decision.reason}
