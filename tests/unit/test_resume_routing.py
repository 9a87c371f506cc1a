"""What a resume tells the next attempt: the lost replica crosses Ray and is avoided."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from ray.exceptions import RayTaskError

from pdserve.decode.resume import ReplicaLost
from pdserve.deployments.frontend.remote_errors import engine_error
from pdserve.routing.router import without_avoided


def replica(rid: str) -> SimpleNamespace:
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=rid))


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
