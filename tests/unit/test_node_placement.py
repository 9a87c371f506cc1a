"""Placement over the cluster's nodes: a pool no node can hold fails the build, naming it."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve.deployments.config import AppConfig
from pdserve.deployments.config.nodes import (
    NodeResources,
    check_node_placement,
    placement_problems,
    replica_demand,
)


def two_hosts(cpus: float = 2.0) -> list[NodeResources]:
    return NodeResources.alive([
        {"NodeManagerAddress": "10.0.0.2", "NodeID": "a", "Alive": True,
         "Resources": {"CPU": cpus, "host_a": 100.0, "node:10.0.0.2": 1.0}},
        {"NodeManagerAddress": "10.0.0.3", "NodeID": "b", "Alive": True,
         "Resources": {"CPU": cpus, "host_b": 100.0}},
        {"NodeManagerAddress": "10.0.0.4", "NodeID": "c", "Alive": False,
         "Resources": {"CPU": 64.0, "host_c": 100.0}},
    ])


def config(prefill: dict[str, Any], decode: dict[str, Any] | None = None,
           ingress: dict[str, Any] | None = None, **app: Any) -> AppConfig:
    args: dict[str, Any] = {"models": [{"model_id": "tiny", "model": "pdserve://tiny",
                                        "prefill": prefill, "decode": decode or {}}],
                            "node_placement": "strict", **app}
    if ingress is not None:
        args["ingress"] = ingress
    return AppConfig.model_validate(args)


def test_a_replica_reserves_ray_resources_by_rays_names() -> None:
    assert replica_demand({"num_cpus": 0.5, "num_gpus": 1, "resources": {"host_a": 1}},
                          0.5) == {"CPU": 0.5, "GPU": 1.0, "host_a": 1.0}
    assert replica_demand({"num_cpus": 0}, 0.0) == {}
    # the CPUs as the config resolves them: Ray Serve's default of 1 for a pool without num_cpus
    pools = config({"ray_actor_options": {"resources": {"host_a": 1}}}).models[0].pools()
    assert pools["prefill"].cpus_per_replica() == 1.0


def test_nodes_that_may_still_join_are_a_warning_by_default() -> None:
    """KubeRay and Anyscale start workers after the head; an autoscaler adds nodes later."""
    lenient = config({"ray_actor_options": {"resources": {"host_z": 1}}},
                     node_placement="warn")
    problems = check_node_placement(lenient, two_hosts())
    assert len(problems) == 1 and "models[0].prefill.ray_actor_options" in problems[0]
    assert AppConfig.model_validate(
        {"models": [{"model_id": "t", "model": "m"}]}).node_placement == "warn"


def test_the_replica_budget_bounds_what_one_host_must_hold() -> None:
    on_a = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
            "ray_actor_options": {"num_cpus": 0.5, "resources": {"host_a": 1}}}
    assert placement_problems(config(on_a, on_a), two_hosts())  # 8 x 0.5 CPU on a 2-CPU host
    assert not placement_problems(config(on_a, on_a, replica_budget=2), two_hosts())


def test_pools_pinned_to_hosts_that_exist_pass() -> None:
    check_node_placement(config(
        {"ray_actor_options": {"num_cpus": 0.5, "resources": {"host_a": 1}}},
        {"ray_actor_options": {"num_cpus": 0.5, "resources": {"host_b": 1}},
         "num_replicas": 2, "max_replicas_per_node": 2},
        {"ray_actor_options": {"num_cpus": 0, "resources": {"host_a": 1}}}), two_hosts())


@pytest.mark.parametrize(("options", "field"), [
    ({"resources": {"host_z": 1}}, "models[0].prefill.ray_actor_options"),
    ({"resources": {"host_c": 1}}, "models[0].prefill.ray_actor_options"),  # its node is dead
    ({"num_gpus": 1}, "models[0].prefill.ray_actor_options"),
    ({"num_cpus": 3}, "models[0].prefill.ray_actor_options"),
])
def test_a_pool_no_node_can_hold_is_named(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")) as err:
        check_node_placement(config({"ray_actor_options": options}), two_hosts())
    assert "host_a=100" in str(err.value)  # and what the nodes do offer


def test_an_ingress_no_node_can_hold_is_named() -> None:
    with pytest.raises(ValueError, match="ingress.ray_actor_options"):
        check_node_placement(config({}, ingress={"ray_actor_options": {
            "num_cpus": 0, "resources": {"host_z": 1}}}), two_hosts())


def test_more_replicas_than_hosts_allow_per_node_is_named() -> None:
    spread = {"num_replicas": 3, "max_replicas_per_node": 1,
              "ray_actor_options": {"num_cpus": 0.5}}
    with pytest.raises(ValueError, match=r"models\[0\].prefill.max_replicas_per_node"):
        check_node_placement(config(spread), two_hosts())
    check_node_placement(config({**spread, "num_replicas": 2}), two_hosts())


def test_pools_tied_to_one_host_must_fit_its_cpus() -> None:
    on_a = {"num_replicas": 3, "ray_actor_options": {"num_cpus": 0.5, "resources": {"host_a": 1}}}
    with pytest.raises(ValueError, match="only node 10.0.0.2 can hold need 3 CPUs"):
        check_node_placement(config(on_a, on_a), two_hosts())
    check_node_placement(config(on_a, on_a), two_hosts(cpus=4.0))
    # free to go anywhere: the cluster-wide budget (`check_cpu_budget`) covers them
    check_node_placement(config({"num_replicas": 3}, {"num_replicas": 0}), two_hosts())


def test_one_node_leaves_the_cpus_to_the_cluster_wide_budget() -> None:
    """On one node every pool is tied to it; `check_cpu_budget` (which knows the replica
    budget's effect) says whether they fit."""
    many = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
            "ray_actor_options": {"num_cpus": 0.5}}
    assert not placement_problems(config(many, many), two_hosts()[:1])


def test_no_nodes_known_checks_nothing() -> None:
    check_node_placement(config({"ray_actor_options": {"resources": {"host_z": 1}}}), [])


def test_max_replicas_per_node_reaches_ray_serve() -> None:
    from pdserve.deployments.app import _pool_options

    cfg = config({"max_replicas_per_node": 1, "num_replicas": 2})
    model = cfg.models[0]
    options = _pool_options("tiny-prefill", "prefill", model.pools()["prefill"], model, cfg)
    assert options["max_replicas_per_node"] == 1
    options = _pool_options("tiny-decode", "decode", model.pools()["decode"], model, cfg)
    assert "max_replicas_per_node" not in options  # Ray's default: no bound
