"""Replica-side SLO signals and the Ray policy adapter's reading of them (fake contexts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pdserve.deployments.autoscaling.policy import SLOAutoscalingPolicy, latest_values, pool_of
from pdserve.deployments.autoscaling.report import TARGET_PREFIX, ReplicaReport
from pdserve.deployments.autoscaling.signals import LatencyWindow, ReplicaSLOSignals
from pdserve.deployments.config import PoolName, SLOTargets


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_window_percentile_and_expiry() -> None:
    clock = Clock()
    window = LatencyWindow(10.0, clock)
    assert window.percentile(90) is None
    for value in range(1, 11):
        window.add(float(value))
    assert window.percentile(50) == 5.0 and window.percentile(90) == 9.0
    assert window.percentile(100) == 10.0
    clock.now = 10.5
    assert window.percentile(90) is None


def test_warmup_requests_are_not_sampled_and_queue_drains() -> None:
    clock = Clock()
    replica = ReplicaSLOSignals(window_s=60, warmup_requests=1, clock=clock)
    cold = replica.start(prompt_tokens=100)
    assert replica.queued_prefill_tokens == 100 and not replica.warm
    clock.now = 5.0  # a compile-slow first request
    cold.on_output(1)
    cold.finish()
    assert replica.warm and replica.ttft.percentile(90) is None
    assert replica.queued_prefill_tokens == 0
    warm = replica.start(prompt_tokens=50)
    clock.now = 5.2
    warm.on_output(1)
    clock.now = 5.5
    warm.on_output(3)  # three tokens coalesced into one output: 100 ms each
    warm.finish()
    assert abs(replica.ttft.percentile(90) - 200.0) < 1e-6
    assert abs(replica.itl.percentile(50) - 100.0) < 1e-6
    assert len(replica.itl.samples) == 3


def test_request_cancelled_before_first_token_leaves_no_queued_tokens() -> None:
    replica = ReplicaSLOSignals()
    request = replica.start(prompt_tokens=64)
    request.finish()
    request.finish()
    assert replica.queued_prefill_tokens == 0


def test_pool_names() -> None:
    assert pool_of("tiny-pd-prefill") == PoolName("tiny-pd", "prefill")
    assert pool_of("b-colocated") == PoolName("b", "colocated")
    assert pool_of("ingress") is None and pool_of("my-app") is None


@dataclass
class Point:
    timestamp: float
    value: float


@dataclass
class FakeContext:
    deployment_name: str
    current_num_replicas: int
    target_num_replicas: int
    running_replicas: list[str]
    raw_metrics: dict[str, dict[str, list[Point]]] = field(default_factory=dict)
    aggregated_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    capacity_adjusted_min_replicas: int = 1
    capacity_adjusted_max_replicas: int = 2
    total_num_requests: float = 0.0


def report(**values: float) -> dict[str, list[Point]]:
    return {name: [Point(1.0, -5.0), Point(2.0, value)] for name, value in values.items()}


def context(name: str, replicas: dict[str, dict[str, float]], **kw: Any) -> FakeContext:
    raw: dict[str, dict[str, list[Point]]] = {}
    for replica, values in replicas.items():
        for metric, series in report(**values).items():
            raw.setdefault(metric, {})[replica] = series
    n = len(replicas)
    return FakeContext(name, n, n, list(replicas), raw, **kw)


#: The targets replicas report (as their `record_autoscaling_stats` encodes them).
SLO = {name: value for name, value in ReplicaReport(targets=SLOTargets(
    ttft_ms=500.0, itl_ms=100.0, max_queued_prefill_tokens=1000, max_kv_cache_usage=0.8,
    scale_down_below=0.5, max_prefill_decode_ratio=2.0)).encode().items()
    if name.startswith(TARGET_PREFIX)}


def test_latest_value_per_replica_and_reported_targets() -> None:
    ctx = context("a-prefill", {"r1": {"ttft_ms": 700.0, "warm": 1.0, **SLO}})
    latest = latest_values(ctx)
    assert latest["r1"]["ttft_ms"] == 700.0  # the newest point, not the window's mean
    targets = ReplicaReport.decode(latest["r1"]).targets
    assert targets is not None and targets.ttft_ms == 500.0
    assert targets.min_prefill_decode_ratio is None and targets.max_prefill_decode_ratio == 2.0


def test_app_policy_moves_the_slow_pool_with_live_targets_and_budget() -> None:
    """TTFT 700 ms is over the 500 ms target the replicas report (the defaults would say
    2000 ms): the prefill pool grows; the other model's pool and non-pool deployments stay."""
    policy = SLOAutoscalingPolicy()
    policy.metrics = None
    common = {"warm": 1.0, "replica_budget": 4.0, **SLO}
    contexts = {
        "id-ap": context("a-prefill", {"p1": {"ttft_ms": 700.0, **common}}),
        "id-ad": context("a-decode", {"d1": {"itl_ms": 20.0, **common}}),
        "id-b": context("b-colocated", {"c1": {"ttft_ms": 100.0, "itl_ms": 20.0, **common}}),
        "id-x": context("user-frontend", {"x1": {}}),
    }
    targets, state = policy(contexts)
    assert targets == {"id-ap": 2, "id-ad": 1, "id-b": 1}
    assert state["id-ap"] == {"pdserve_reason": "ttft"} and policy.budget == 4
    contexts["id-b"] = context("b-colocated", {"c1": {"itl_ms": 300.0, **common}})
    targets, _ = policy(contexts)
    # budget 4 = three minimums + one: b's ITL deficit (3.0) beats a's TTFT deficit (1.4)
    assert targets == {"id-ap": 1, "id-ad": 1, "id-b": 2}


def test_peak_queued_tokens_catches_a_burst_between_reports() -> None:
    replica = ReplicaSLOSignals()
    burst = [replica.start(prompt_tokens=300) for _ in range(3)]
    for request in burst:
        request.on_output(1)
    assert replica.queued_prefill_tokens == 0
    assert replica.take_peak_queued_prefill_tokens() == 900
    assert replica.take_peak_queued_prefill_tokens() == 0


def test_load_signals_use_the_look_back_mean_latencies_the_latest_value() -> None:
    ctx = context("a-prefill", {"r1": {"ttft_ms": 700.0, "queued_prefill_tokens": 900.0}})
    ctx.aggregated_metrics = {"queued_prefill_tokens": {"r1": 450.0}, "ttft_ms": {"r1": 1.0}}
    latest = latest_values(ctx)["r1"]
    assert latest["queued_prefill_tokens"] == 450.0 and latest["ttft_ms"] == 700.0


def test_pool_policy_decides_one_pool_with_its_reported_targets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pdserve.deployments.autoscaling import policy

    state = SLOAutoscalingPolicy()
    state.metrics = None
    monkeypatch.setattr(policy, "_pool_policy_state", state)
    slow = context("a-colocated", {"c1": {"ttft_ms": 700.0, "warm": 1.0, **SLO}})
    assert policy.pool_policy(slow) == (2, {"pdserve_reason": "ttft"})
    user = context("frontend", {"x1": {}})
    assert policy.pool_policy(user)[0] == user.target_num_replicas
