"""What a failed call to an engine pool means to the ingress: the engine's own error, or a
lost replica.

Ray wraps an exception raised in a replica as `RayTaskError`, whose text carries the remote
traceback, the actor's name, pid and address: the ingress raises the replica's exception itself
instead (vLLM's message, mapped to its HTTP status by vLLM's OpenAI layer). A replica that died
(`RayActorError`), whose stream broke (gRPC transport errors) or whose engine core died
(`EngineDeadError`) becomes `ReplicaLost`, which the orchestrator resumes elsewhere. A pool
whose queue is full (Ray's `max_queued_requests`: `BackPressureError`) is a retryable 503.
"""

from __future__ import annotations

import grpc
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError
from vllm.exceptions import RetryableRequestError
from vllm.v1.engine.exceptions import EngineDeadError

from pdserve.decode.resume import ReplicaLost

#: gRPC codes of a connection that went away (others, e.g. RESOURCE_EXHAUSTED for an
#: oversized message, would fail again the same way on another replica).
TRANSPORT_LOST = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                            grpc.StatusCode.UNKNOWN})


def engine_error(exc: Exception) -> Exception:
    """The exception the ingress should raise for `exc` from a pool call."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, EngineDeadError):
            return ReplicaLost("engine_dead")
        if isinstance(cause, Exception):
            return cause
        return RuntimeError(f"the engine replica failed: {type(cause).__name__}")
    if isinstance(exc, EngineDeadError):
        return ReplicaLost("engine_dead")
    if isinstance(exc, BackPressureError):  # refused before any engine saw the request
        return RetryableRequestError("the model's engines are at capacity (their queue is "
                                     "full); retry later")
    if isinstance(exc, RayActorError):
        return ReplicaLost("replica_died", type(exc).__name__)
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in TRANSPORT_LOST:
        return ReplicaLost("stream_broken", exc.code().name)
    return exc
