"""What an engine replica reports to the autoscaling policy, and how the policy reads it back.

Ray Serve carries `record_autoscaling_stats()` from each replica to the controller as a flat
`{name: float}`; `ReplicaReport.encode` and `decode` are the one agreement about those names.
A latency without a sample in the window is left out, the model's SLO targets travel as
`slo_<field>` (a bound that is not set is left out), so the policy always decides with the
live targets, which a `user_config` change retunes without restarting an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pdserve.deployments.config.slo import SLOTargets

WARM, TTFT, ITL = "warm", "ttft_ms", "itl_ms"
QUEUED, KV_USAGE = "queued_prefill_tokens", "kv_cache_usage"
RUNNING, WAITING, BUDGET = "num_running", "num_waiting", "replica_budget"
ARRIVALS, CAPACITY, FLOOR_INTERVAL = "arrivals_per_s", "capacity_rps", "planner_interval_s"
NODE, ENGINE_SLOTS, OVERSUBSCRIBE = "node", "node_engine_slots", "oversubscribe_cores"
FIXED_ENGINES = "fixed_engines"
TARGET_PREFIX = "slo_"
#: Load signals, which the policy averages over Ray's look-back window (one report can catch a
#: quiet instant); latencies are already windowed on the replica and targets must be the live
#: ones, so those take the latest report.
SMOOTHED = (QUEUED, KV_USAGE, RUNNING, WAITING)


@dataclass(frozen=True)
class ReplicaSignals:
    """One replica's load and latency at report time."""

    warm: bool = True  # past its first requests (compile, cold caches): latencies count
    ttft_ms: float | None = None  # recent percentile; None: no sample in the window
    itl_ms: float | None = None
    kv_cache_usage: float = 0.0
    queued_prefill_tokens: float = 0.0  # peak since the last report
    waiting: float = 0.0
    running: float = 0.0
    arrivals_per_s: float = 0.0  # requests that reached the replica, over the window
    capacity_rps: float | None = None  # what one engine carries within the SLO (planner)
    node: int | None = None  # `node_key` of the replica's Ray node
    engine_slots: int | None = None  # engines its node holds physically (CPU: cores/engine)

    @property
    def busy(self) -> bool:
        return self.waiting > 0 or self.running > 0 or self.queued_prefill_tokens > 0


@dataclass(frozen=True)
class ReplicaReport:
    signals: ReplicaSignals = field(default_factory=ReplicaSignals)
    targets: SLOTargets | None = None
    replica_budget: int | None = None
    planner_interval_s: float | None = None  # the model's slow loop (planner floor) period
    oversubscribe_cores: bool = False
    fixed_engines: int = 0  # engines of the app's pools Ray does not autoscale (no report)

    def encode(self) -> dict[str, float]:
        s = self.signals
        out = {WARM: float(s.warm), QUEUED: float(s.queued_prefill_tokens),
               KV_USAGE: float(s.kv_cache_usage), RUNNING: float(s.running),
               WAITING: float(s.waiting), ARRIVALS: float(s.arrivals_per_s),
               OVERSUBSCRIBE: float(self.oversubscribe_cores),
               FIXED_ENGINES: float(self.fixed_engines)}
        for name, value in ((TTFT, s.ttft_ms), (ITL, s.itl_ms), (BUDGET, self.replica_budget),
                            (CAPACITY, s.capacity_rps), (NODE, s.node),
                            (ENGINE_SLOTS, s.engine_slots),
                            (FLOOR_INTERVAL, self.planner_interval_s)):
            if value is not None:
                out[name] = float(value)
        if self.targets is not None:
            out.update({f"{TARGET_PREFIX}{name}": float(value)
                        for name, value in self.targets.model_dump().items()
                        if value is not None})
        return out

    @classmethod
    def decode(cls, values: Mapping[str, float]) -> ReplicaReport:
        """The report behind `values`; raises `ValueError` for targets that do not validate."""
        signals = ReplicaSignals(
            warm=values.get(WARM, 0.0) >= 1.0, ttft_ms=values.get(TTFT),
            itl_ms=values.get(ITL), kv_cache_usage=values.get(KV_USAGE, 0.0),
            queued_prefill_tokens=values.get(QUEUED, 0.0), waiting=values.get(WAITING, 0.0),
            running=values.get(RUNNING, 0.0), arrivals_per_s=values.get(ARRIVALS, 0.0),
            capacity_rps=values.get(CAPACITY), node=_int(values.get(NODE)),
            engine_slots=_int(values.get(ENGINE_SLOTS)))
        targets = {name.removeprefix(TARGET_PREFIX): value for name, value in values.items()
                   if name.startswith(TARGET_PREFIX)}
        budget = values.get(BUDGET)
        return cls(signals, SLOTargets.model_validate(targets) if targets else None,
                   _int(budget), values.get(FLOOR_INTERVAL),
                   values.get(OVERSUBSCRIBE, 0.0) >= 1.0, _int(values.get(FIXED_ENGINES)) or 0)


def _int(value: float | None) -> int | None:
    return round(value) if value is not None else None


def node_key(node_id: str) -> int:
    """A Ray node id (hex) as a number a report can carry exactly (48 bits: a float holds 53)."""
    return int(node_id[:12], 16)
