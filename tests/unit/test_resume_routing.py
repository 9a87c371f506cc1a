"""What a resume tells the next attempt: the lost replica crosses Ray and is avoided."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from ray.exceptions import RayTaskError

from pdserve.decode.resume import KVHandoff, ReplicaLost
from pdserve.deployments.frontend.remote_errors import engine_error
from pdserve.routing.router import without_avoided


def replica(rid: str, draining: bool = False) -> SimpleNamespace:
    stats = {"replica": rid, "block_size": 16, "draining": draining}
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=rid), routing_stats=stats)


def test_replica_lost_crosses_ray_with_its_replica() -> None:
    lost = ReplicaLost("engine_dead", replica="abc123")
    again = pickle.loads(pickle.dumps(lost))
    assert (again.reason, again.replica, str(again)) == ("engine_dead", "abc123", "engine_dead")
    raised_in_replica = RayTaskError("generate", "Traceback ...", lost).as_instanceof_cause()
    unwrapped = engine_error(raised_in_replica)
    assert isinstance(unwrapped, ReplicaLost) and unwrapped.replica == "abc123"


def test_routers_skip_avoided_replicas_unless_none_is_left() -> None:
    a, b = replica("a"), replica("b")
    assert without_avoided([a, b], ("a",)) == [b]
    assert without_avoided([a], ("a",)) == [a]  # better a retry there than no route at all
    assert without_avoided([a, b], ()) == [a, b]


def test_routers_skip_draining_replicas_unless_none_is_left() -> None:
    a, b, c = replica("a", draining=True), replica("b"), replica("c")
    assert without_avoided([a, b, c], ()) == [b, c]
    assert without_avoided([a, b], ("b",)) == [a]  # a draining one before the one just lost
    assert without_avoided([a, b], ("a", "b")) == [a, b]  # only avoided ones: all of them
    assert without_avoided([a], ()) == [a]


def test_a_kv_handoff_crosses_ray_with_its_transfer_params() -> None:
    handoff = KVHandoff({"do_remote_prefill": True, "remote_engine_id": "e",
                         "remote_block_ids": [1, 2]}, tokens=70, recomputed=6)
    lost = pickle.loads(pickle.dumps(ReplicaLost("draining", replica="abc", handoff=handoff)))
    raised_in_replica = RayTaskError("generate", "Traceback ...", lost).as_instanceof_cause()
    unwrapped = engine_error(raised_in_replica)
    assert isinstance(unwrapped, ReplicaLost)
    assert (unwrapped.reason, unwrapped.replica, unwrapped.handoff) == ("draining", "abc",
                                                                        handoff)
