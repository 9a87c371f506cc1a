"""Values that cross a process have one definition, and survive the trip both ways."""

from __future__ import annotations

import pickle

import pytest

from pdserve.deployments.autoscaling.report import ReplicaReport, ReplicaSignals
from pdserve.deployments.config import AppConfig, PoolName, SLOTargets, engine_binding
from pdserve.deployments.config.pools import ROLES
from pdserve.routing.types import RoutingStats


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("model", ["tiny", "tiny-pd", "org-model-7b"])
def test_pool_names_round_trip_through_the_deployment_name(model: str, role: str) -> None:
    pool = PoolName(model, role)  # type: ignore[arg-type]
    assert PoolName.parse(pool.deployment) == pool
    assert pool.label == f"{model}/{role}"


@pytest.mark.parametrize("name", ["ingress", "docs-retriever", "user-frontend", "-prefill"])
def test_deployments_that_are_not_pools_parse_to_none(name: str) -> None:
    assert PoolName.parse(name) is None


def test_routing_stats_round_trip_and_an_unreported_replica_decodes_to_none() -> None:
    stats = RoutingStats(replica="r1", block_size=32, num_gpu_blocks=72,
                         kv_events_endpoint="tcp://10.0.0.1:5557",
                         kv_events_replay_endpoint="tcp://10.0.0.1:5558",
                         kv_cache_usage=0.25, num_running=3, num_waiting=1)
    assert RoutingStats.decode(stats.encode()) == stats
    assert RoutingStats.decode({}) is None and RoutingStats.decode(None) is None
    newer = {**stats.encode(), "added_by_a_later_version": 1}
    assert RoutingStats.decode(newer) == stats


@pytest.mark.parametrize("report", [
    ReplicaReport(),
    ReplicaReport(ReplicaSignals(warm=False, ttft_ms=812.5, itl_ms=None, kv_cache_usage=0.4,
                                 queued_prefill_tokens=1500.0, waiting=2.0, running=5.0)),
    ReplicaReport(ReplicaSignals(ttft_ms=None, itl_ms=33.0),
                  SLOTargets(ttft_ms=500, max_prefill_decode_ratio=2.0, warmup_requests=0), 4),
])
def test_replica_reports_round_trip_through_rays_float_dict(report: ReplicaReport) -> None:
    encoded = report.encode()
    assert all(isinstance(v, float) for v in encoded.values())  # what Ray accepts
    assert ReplicaReport.decode(encoded) == report


def test_unset_values_are_absent_not_sentinels() -> None:
    encoded = ReplicaReport(ReplicaSignals(ttft_ms=None), SLOTargets()).encode()
    assert "ttft_ms" not in encoded and "replica_budget" not in encoded
    assert "slo_min_prefill_decode_ratio" not in encoded
    assert encoded["slo_ttft_ms"] == SLOTargets().ttft_ms


def test_a_report_with_invalid_targets_is_refused() -> None:
    with pytest.raises(ValueError, match="ttft_ms"):
        ReplicaReport.decode({"slo_ttft_ms": -1.0})


def test_each_engine_replica_is_bound_its_own_slice_and_it_pickles() -> None:
    config = AppConfig.model_validate({"models": [
        {"model_id": "a", "model": "m", "mode": "pd"},
        {"model_id": "b", "model": "m", "mode": "colocated"}],
        "testing": {"fault_injection": True}})
    binding = engine_binding(config, config.models[1], "colocated")
    assert (binding.model.model_id, binding.role, binding.pool_index, binding.num_pools) == (
        "b", "colocated", 2, 3)
    assert binding.fault_injection and binding.pool == PoolName("b", "colocated")
    assert pickle.loads(pickle.dumps(binding)) == binding  # Ray ships it to the replica
