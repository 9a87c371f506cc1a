"""How many more engines the cluster's nodes hold physically, from where engines report they
run (`ReplicaSignals.node`, `engine_slots`). Pure: the policy gathers the inputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from pdserve.deployments.autoscaling.report import ReplicaSignals


def free_engine_slots(engines: Iterable[ReplicaSignals], starting: int,
                      idle_nodes: Mapping[int, int] | None = None, fixed: int = 0) -> int | None:
    """Engine slots left: per node that hosts engines, its slots less its engines (a node
    already past its cores adds none and takes none from another); plus `idle_nodes` (alive
    nodes without a reporting engine: node → slots); less what holds a core somewhere unseen:
    `starting` replicas, running ones whose first report has not come, and `fixed` engines
    (pools Ray does not autoscale, which report to no policy). None when an engine's slots are
    unknown (not pinned to cores, or on accelerators): no bound then."""
    slots: dict[int, int] = {}
    hosted: Counter[int] = Counter()
    unseen = starting + fixed
    for engine in engines:
        if engine.node is None:
            unseen += 1
            continue
        if engine.engine_slots is None:
            return None
        slots[engine.node] = engine.engine_slots
        hosted[engine.node] += 1
    if not slots:
        return None
    free = sum(max(0, slots[node] - hosted[node]) for node in slots)
    free += sum(n for node, n in (idle_nodes or {}).items() if node not in slots)
    return free - unseen
