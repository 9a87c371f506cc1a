"""The SLO autoscaling decision: a pure function of a snapshot of every pool of every model.

Ray Serve's application-level policy (`policy.py`) builds the snapshot from its
`AutoscalingContext`s and replicas' reports (`report.py`), and applies Ray's own delays and
bounds to the result; nothing here imports Ray, so the rules are unit-tested table-driven.

Rules, per pool:
- *pressure* is the busiest signal over its target (1.0 = exactly at target): TTFT and queued
  prefill tokens for prefill/colocated pools, ITL and KV-cache usage for decode/colocated;
  latencies are averaged over warm replicas only (a warming replica's samples are ignored).
- grow when pressure > 1, by enough replicas to bring it back to 1 (at most doubling);
- shrink by one only when, with one replica fewer, the pressure would still be below
  `scale_down_below` (hysteresis: steady load in between changes nothing); to zero only when
  idle (colocated pools with `min_replicas: 0`), and from zero as soon as a request waits;
- hold while replicas are starting or stopping (no decision stacks on one in progress);
- never below the pool's planner floor (`floor.py`, the slow loop): grow to it at once;
then per model the P:D ratio bounds (a trim stops at the floor), then the shared replica
budget: each pool's minimum first, the rest to restoring growth (from zero, to a minimum or a
floor) and then to the pools with the largest SLO deficit (pressure) first; then the nodes'
physical room (`free_engine_slots`): engines that would share a core with another add no
compute, so such growth is cut, in the same order, and reported (`no_physical_capacity`)
unless the app oversubscribes on purpose. The budget and the room are hard: a floor beyond
them is held only as far as they reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from pdserve.deployments.autoscaling.report import ReplicaSignals
from pdserve.deployments.config.pools import Role
from pdserve.deployments.config.slo import SLOTargets

UP, DOWN, HOLD = "up", "down", "hold"


@dataclass(frozen=True)
class PoolSnapshot:
    model: str
    role: Role  # prefill | decode | colocated
    running: int  # replicas serving now
    target: int  # replicas Ray is currently steering to
    min_replicas: int
    max_replicas: int
    replicas: tuple[ReplicaSignals, ...] = ()
    requests: float = 0.0  # ongoing + queued at handles (Ray's `total_num_requests`)
    floor: int = 0  # the planner's minimum for the load observed (slow loop)

    @property
    def lowest(self) -> int:
        """What the pool may shrink to: its minimum, or the planner floor within its max."""
        return max(self.min_replicas, min(self.floor, self.max_replicas))

    @property
    def key(self) -> tuple[str, Role]:
        return (self.model, self.role)


@dataclass(frozen=True)
class Snapshot:
    pools: tuple[PoolSnapshot, ...]
    targets: dict[str, SLOTargets] = field(default_factory=dict)  # by model
    replica_budget: int | None = None
    free_engine_slots: int | None = None  # engines the nodes still hold physically (None: unknown)
    oversubscribe: bool = False  # grow beyond `free_engine_slots` anyway (flagged, not cut)


@dataclass(frozen=True)
class Decision:
    replicas: int
    direction: str  # up | down | hold
    reason: str
    pressure: float = 0.0
    signals: dict[str, float] = field(default_factory=dict)  # signal → value / target
    beyond_physical: int = 0  # replicas added past the nodes' free engine slots


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pressures(pool: PoolSnapshot, targets: SLOTargets) -> dict[str, float]:
    """Each signal the pool answers for, as a fraction of its target (warm replicas only)."""
    warm = [r for r in pool.replicas if r.warm]
    n = max(1, len(warm))
    out: dict[str, float] = {}
    if pool.role in ("prefill", "colocated"):
        ttft = _mean([r.ttft_ms for r in warm if r.ttft_ms is not None])
        out["ttft"] = (ttft or 0.0) / targets.ttft_ms
        queued = sum(r.queued_prefill_tokens for r in warm) / n
        out["queued_prefill_tokens"] = queued / targets.max_queued_prefill_tokens
    if pool.role in ("decode", "colocated"):
        itl = _mean([r.itl_ms for r in warm if r.itl_ms is not None])
        out["itl"] = (itl or 0.0) / targets.itl_ms
        kv = _mean([r.kv_cache_usage for r in warm]) or 0.0
        out["kv_cache_usage"] = kv / targets.max_kv_cache_usage
    return out


def decide_pool(pool: PoolSnapshot, targets: SLOTargets) -> Decision:
    """One pool on its own (what a per-deployment policy can do)."""
    if pool.running != pool.target:
        return Decision(pool.target, HOLD, "starting" if pool.running < pool.target
                        else "stopping")
    n = pool.running
    if n == 0:
        if pool.requests > 0:
            return Decision(max(1, pool.min_replicas), UP, "scale_from_zero")
        return Decision(max(0, pool.min_replicas), HOLD, "idle")
    if n < pool.lowest:
        return Decision(pool.lowest, UP, "planner_floor" if pool.floor > pool.min_replicas
                        else "min_replicas")
    if not any(r.warm for r in pool.replicas) and pool.replicas:
        return Decision(n, HOLD, "warming")
    signals = pressures(pool, targets)
    signal, pressure = max(signals.items(), key=lambda kv: kv[1], default=("none", 0.0))
    if pressure > 1.0:
        wanted = min(2 * n, max(n + 1, math.ceil(n * pressure)))
        replicas = min(pool.max_replicas, wanted)
        if replicas > n:
            return Decision(replicas, UP, signal, pressure, signals)
        return Decision(n, HOLD, "max_replicas", pressure, signals)
    if n > pool.lowest:
        if n == 1:
            idle = pool.requests == 0 and not any(r.busy for r in pool.replicas)
            if idle:
                return Decision(0, DOWN, "idle", pressure, signals)
        elif pressure * n / (n - 1) < targets.scale_down_below:
            return Decision(n - 1, DOWN, "headroom", pressure, signals)
    return Decision(n, HOLD, "steady", pressure, signals)


def _apply_ratio(
    prefill: PoolSnapshot, decode: PoolSnapshot, p: Decision, d: Decision, targets: SLOTargets
) -> tuple[Decision, Decision]:
    """Keep prefill/decode replicas within the model's ratio bounds: grow the short side if it
    can, otherwise trim the long side."""
    low, high = targets.min_prefill_decode_ratio, targets.max_prefill_decode_ratio
    if p.replicas == 0 or d.replicas == 0:
        return p, d
    if high is not None and p.replicas / d.replicas > high + 1e-9:
        need = math.ceil(p.replicas / high)
        if need <= decode.max_replicas:
            d = replace(d, replicas=need, direction=_direction(need, decode), reason="ratio")
        else:
            keep = max(prefill.lowest, math.floor(d.replicas * high))
            p = replace(p, replicas=keep, direction=_direction(keep, prefill), reason="ratio")
    if low is not None and p.replicas / d.replicas < low - 1e-9:
        need = math.ceil(d.replicas * low)
        if need <= prefill.max_replicas:
            p = replace(p, replicas=need, direction=_direction(need, prefill), reason="ratio")
        else:
            keep = max(decode.lowest, math.floor(p.replicas / low))
            d = replace(d, replicas=keep, direction=_direction(keep, decode), reason="ratio")
    return p, d


#: Growth that restores what a pool must hold comes before growth for SLO pressure when
#: replicas are scarce (budget, physical room): a pool at zero with requests waiting, one
#: below its minimum or its planner floor.
RESTORING = ("scale_from_zero", "min_replicas", "planner_floor")


def _priority(decision: Decision, key: tuple[str, Role]) -> tuple[bool, float, tuple[str, Role]]:
    return (decision.reason not in RESTORING, -decision.pressure, key)


def _direction(replicas: int, pool: PoolSnapshot) -> str:
    return UP if replicas > pool.target else DOWN if replicas < pool.target else HOLD


def _apply_budget(
    pools: dict[tuple[str, Role], PoolSnapshot],
    decisions: dict[tuple[str, Role], Decision],
    budget: int,
) -> dict[tuple[str, Role], Decision]:
    """Each pool's minimum first, then the rest in order of SLO deficit (largest first)."""
    grant = {key: min(pools[key].min_replicas, d.replicas) for key, d in decisions.items()}
    left = budget - sum(grant.values())
    order = sorted(decisions, key=lambda k: _priority(decisions[k], k))
    out = dict(decisions)
    for key in order:
        extra = max(0, min(decisions[key].replicas - grant[key], left))
        grant[key] += extra
        left -= extra
        if grant[key] < decisions[key].replicas:
            out[key] = replace(decisions[key], replicas=grant[key],
                               direction=_direction(grant[key], pools[key]), reason="budget")
    return out


def decide(snapshot: Snapshot) -> dict[tuple[str, Role], Decision]:
    """Target replicas for every pool, keyed by (model, role)."""
    pools = {pool.key: pool for pool in snapshot.pools}
    decisions = {
        key: decide_pool(pool, snapshot.targets.get(pool.model, SLOTargets()))
        for key, pool in pools.items()
    }
    for (model, role) in list(decisions):
        if role != "prefill" or (model, "decode") not in decisions:
            continue
        targets = snapshot.targets.get(model, SLOTargets())
        p_key, d_key = (model, "prefill"), (model, "decode")
        if {decisions[p_key].reason, decisions[d_key].reason} & {"starting", "stopping"}:
            continue  # one side is moving: re-check the ratio once it settled
        decisions[p_key], decisions[d_key] = _apply_ratio(
            pools[p_key], pools[d_key], decisions[p_key], decisions[d_key], targets
        )
    if snapshot.replica_budget is not None:
        decisions = _apply_budget(pools, decisions, snapshot.replica_budget)
    if snapshot.free_engine_slots is not None:
        decisions = _apply_physical_room(pools, decisions, snapshot.free_engine_slots,
                                         snapshot.oversubscribe)
    return decisions


def _apply_physical_room(
    pools: dict[tuple[str, Role], PoolSnapshot],
    decisions: dict[tuple[str, Role], Decision],
    free: int,
    oversubscribe: bool,
) -> dict[tuple[str, Role], Decision]:
    """Growth beyond what Ray already steers to, within `free` engine slots, largest deficit
    first; the rest cut back to the current target (or, oversubscribing, kept and flagged)."""
    left = max(0, free)
    out = dict(decisions)
    for key in sorted(decisions, key=lambda k: _priority(decisions[k], k)):
        decision, target = decisions[key], pools[key].target
        growth = decision.replicas - target
        if growth <= 0:
            continue
        fits = min(growth, left)
        left -= fits
        if fits == growth:
            continue
        if oversubscribe:
            out[key] = replace(decision, beyond_physical=growth - fits)
        else:
            out[key] = replace(decision, replicas=target + fits, beyond_physical=growth - fits,
                               direction=_direction(target + fits, pools[key]),
                               reason="no_physical_capacity")
    return out
