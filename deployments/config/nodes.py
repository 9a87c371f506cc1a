"""Whether the cluster's nodes can hold the deployments where the config puts them.

A pool is placed with Ray's own means (`ray_actor_options`: `num_cpus`, `num_gpus`, custom
`resources` such as `host_a` that `ray start --resources` gives a node;
`max_replicas_per_node`). Ray itself never refuses a placement it cannot make: the replicas
wait for a node that is not there. So at start-up, with the nodes alive now, a pool that no
node can hold, or that asks for more replicas than its nodes allow, or pools tied to one node
that need more CPUs than it has, are named (`placement_problems`). Nodes may still join (a
KubeRay or Anyscale cluster starts its workers after the head; an autoscaler adds nodes on
demand), so the app warns by default and fails the build only when the config says the
cluster is static (`node_placement: strict`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pdserve.deployments.config.app import AppConfig


@dataclass(frozen=True)
class NodeResources:
    """One alive node: its id and its total resources, as `ray.nodes()` reports them."""

    node_id: str
    resources: Mapping[str, float]

    @classmethod
    def alive(cls, ray_nodes: Iterable[Mapping[str, Any]]) -> list[NodeResources]:
        return [cls(str(node.get("NodeManagerAddress") or node["NodeID"]),
                    dict(node.get("Resources") or {}))
                for node in ray_nodes if node.get("Alive")]

    def holds(self, demand: Mapping[str, float]) -> bool:
        return all(self.resources.get(name, 0.0) + 1e-9 >= amount
                   for name, amount in demand.items())


@dataclass(frozen=True)
class Placement:
    """What one deployment asks of the nodes."""

    field: str  # the config field that says it, for the error
    replicas: int
    demand: Mapping[str, float]  # per replica, by Ray's resource names
    max_per_node: int | None


def replica_demand(ray_actor_options: Mapping[str, Any], cpus: float) -> dict[str, float]:
    """The resources one replica reserves on its node, by Ray's names (zeros left out); `cpus`:
    its CPUs as the config resolves them (`PoolConfig.cpus_per_replica`)."""
    demand = {"CPU": cpus, "GPU": float(ray_actor_options.get("num_gpus") or 0)}
    demand.update({name: float(amount)
                   for name, amount in (ray_actor_options.get("resources") or {}).items()})
    return {name: amount for name, amount in demand.items() if amount > 0}


def placements(config: AppConfig) -> list[Placement]:
    """Every engine pool at its maximum size (never above `replica_budget`), and the ingress."""
    budget = config.replica_budget
    found = [Placement(f"models[{i}].{role}",
                       min(pool.max_replicas(), budget) if budget else pool.max_replicas(),
                       replica_demand(pool.ray_actor_options, pool.cpus_per_replica()),
                       pool.max_replicas_per_node)
             for i, model in enumerate(config.models) for role, pool in model.pools().items()]
    ingress = config.ingress
    found.append(Placement("ingress", ingress.num_replicas,
                           replica_demand(ingress.ray_actor_options, ingress.cpus_per_replica()),
                           None))
    return found


def placement_problems(config: AppConfig, nodes: list[NodeResources]) -> list[str]:
    """What the alive `nodes` cannot hold as configured, each naming its field."""
    if not nodes:
        return []
    problems: list[str] = []
    tied: dict[str, list[Placement]] = {}  # the deployments only one node can hold
    for placement in placements(config):
        if placement.replicas == 0:
            continue
        hosts = [node for node in nodes if node.holds(placement.demand)]
        if not hosts:
            offered = "; ".join(f"{node.node_id}: {_resources(node.resources)}" for node in nodes)
            problems.append(f"{placement.field}.ray_actor_options: no node of the cluster "
                            f"offers {_resources(placement.demand)} for one replica "
                            f"(nodes: {offered})")
            continue
        if (placement.max_per_node is not None
                and placement.max_per_node * len(hosts) < placement.replicas):
            problems.append(f"{placement.field}.max_replicas_per_node: {placement.replicas} "
                            f"replicas at {placement.max_per_node} per node need "
                            f"{-(-placement.replicas // placement.max_per_node)} nodes, and "
                            f"{len(hosts)} can hold one")
        if len(hosts) == 1:
            tied.setdefault(hosts[0].node_id, []).append(placement)
    if len(nodes) == 1:  # the cluster-wide budget (`check_cpu_budget`) already said it
        return problems
    for node in nodes:
        need = _cpus(tied.get(node.node_id, []), config.replica_budget)
        have = node.resources.get("CPU", 0.0)
        if need > have + 1e-9:
            problems.append(f"ray_actor_options.num_cpus: the deployments only node "
                            f"{node.node_id} can hold need {need:g} CPUs there, and it has "
                            f"{have:g}; lower num_cpus per replica or the replica counts")
    return problems


def _cpus(placements: list[Placement], budget: int | None) -> float:
    """CPUs these deployments reserve at their largest; engine replicas never above the
    `replica_budget` (as `AppConfig.cpu_demand` counts them)."""
    engines = [p for p in placements if p.field != "ingress"]
    cpus = sum(p.replicas * p.demand.get("CPU", 0.0) for p in engines)
    if budget is not None and engines:
        cpus = min(cpus, budget * max(p.demand.get("CPU", 0.0) for p in engines))
    return cpus + sum(p.replicas * p.demand.get("CPU", 0.0) for p in placements
                      if p.field == "ingress")


def check_node_placement(config: AppConfig, nodes: list[NodeResources]) -> list[str]:
    """Fail with every problem (`node_placement: strict`), or return them for a warning."""
    problems = placement_problems(config, nodes)
    if problems and config.node_placement == "strict":
        raise ValueError("; ".join(problems))
    return problems


def _resources(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={amount:g}" for name, amount in sorted(resources.items())
                     if not name.startswith(("node:", "object_store_memory", "memory")))
