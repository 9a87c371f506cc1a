"""How the ingress reads a failed pool call: the engine's own exception, or a lost replica."""

from __future__ import annotations

import grpc
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from vllm.exceptions import VLLMValidationError
from vllm.v1.engine.exceptions import EngineDeadError

from pdserve.decode.resume import ReplicaLost
from pdserve.deployments.frontend.remote_errors import engine_error

TRACEBACK = 'Traceback (most recent call last):\n  File "/home/ray/x.py" ... pid=4242 ip=10.0.0.7'


def remote(cause: BaseException) -> Exception:
    """What Ray raises in the caller for `cause` raised in a replica."""
    return RayTaskError("ServeReplica:app:tiny-decode.generate", TRACEBACK,
                        cause).as_instanceof_cause()


def test_an_engine_rejection_comes_back_as_vllms_own_error_without_ray_traceback() -> None:
    rejection = VLLMValidationError("logprobs must be at most 20", parameter="logprobs")
    error = engine_error(remote(rejection))
    assert error is rejection
    assert "Traceback" not in str(error) and "pid=" not in str(error)


def test_lost_replicas_engines_and_streams_become_replica_lost() -> None:
    broken = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                  grpc.aio.Metadata(), details="Socket closed")
    cases = {
        "replica_died": [ActorDiedError(), ActorUnavailableError("gone", b"\0" * 16)],
        "engine_dead": [EngineDeadError(), remote(EngineDeadError())],
        "stream_broken": [broken],
    }
    for reason, errors in cases.items():
        for error in errors:
            lost = engine_error(error)
            assert isinstance(lost, ReplicaLost) and lost.reason == reason, (error, lost)


def test_anything_else_passes_through() -> None:
    error = RuntimeError("boom")
    assert engine_error(error) is error
