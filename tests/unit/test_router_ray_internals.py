"""Our routers on Ray's own routing loop (`RequestRouter`, private parts pinned): calls that
share Ray's internal request id — the prompts of one completion request — each get the replica
chosen for them, and each counts in flight there.

Ray 2.60's `RequestRouter` hands a chosen replica to the pending call with the chosen one's
internal request id; every call made while serving one request shares it, so all but one such
call never got a replica and its routing task spun (`ScoredRouter._fulfill_next_pending_request`
matches by the call's metadata object). The replicas are stand-ins with the parts of
`RunningReplica` Ray's loop reads; the loop, the router and the bookings are real."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter

from pdserve.routing.router import DecodeRouter, PrefixAwareRouter
from pdserve.routing.types import RoutingInfo

POOL = DeploymentID(name="pool", app_name="ray-internals")


class Replica:
    """What Ray's routing loop reads of a `RunningReplica`: an idle replica."""

    def __init__(self, unique_id: str) -> None:
        self.replica_id = ReplicaID(unique_id, POOL)
        self.routing_stats: dict[str, Any] = {}
        self.max_ongoing_requests = 100
        self.is_cross_language = False
        self.node_id = ""
        self.availability_zone = None
        self.multiplexed_model_ids: set[str] = set()

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return 0


def call(request_id: str, routed: bool = True) -> PendingRequest:
    """One handle call made while serving request `request_id` (Ray's internal id)."""
    args = [SimpleNamespace(routing=RoutingInfo(prompt_tokens=64))] if routed else []
    return PendingRequest(args=args, kwargs={}, metadata=RequestMetadata(
        request_id=request_id, internal_request_id=request_id))


@pytest.mark.parametrize("router_class", [PrefixAwareRouter, DecodeRouter])
def test_calls_sharing_a_request_id_each_get_their_replica_and_count(
        router_class: type[RequestRouter]) -> None:
    async def scenario() -> None:
        router: Any = router_class(POOL, DeploymentHandleSource.UNKNOWN)
        router.initialize_state()
        replicas = [Replica("r1"), Replica("r2")]
        router.update_replicas(replicas)
        calls = [call("shared") for _ in range(4)] + [call("shared", routed=False)]
        chosen = await asyncio.wait_for(asyncio.gather(
            *(router._choose_replica_for_request(c) for c in calls)), 10)
        assert all(r in replicas for r in chosen)
        for c, replica in zip(calls, chosen, strict=True):  # each got the choice made for it
            assert router.bookings._calls[id(c)].replica == replica.replica_id.unique_id
        loads = router.pool.loads()  # the four with routing information count; spread
        assert {r: n for r, (n, _) in loads.items()} == {"r1": 2, "r2": 2}, loads
        for c, replica in zip(calls, chosen, strict=True):
            router.on_request_routed(c, replica.replica_id, None)
        assert len(router.bookings) == 5
        for replica in chosen:
            router.on_request_completed(replica.replica_id, "shared")
        assert router.pool.in_flight_total() == 0 and not router.bookings

    asyncio.run(scenario())


def test_an_end_is_booked_to_a_sent_call_not_to_a_sibling_still_being_routed() -> None:
    """One call of a request has been chosen (and booked) but not yet sent — its queue-length
    probe is out, or its replica was full — while a sibling is sent and ends: both end booked
    to nothing. (Found in review: ending the first booked call of the request left the ended
    one counted for good once the other chose again.)"""
    async def scenario() -> None:
        router: Any = PrefixAwareRouter(POOL, DeploymentHandleSource.UNKNOWN)
        router.initialize_state()
        replica = Replica("r1")
        router.update_replicas([replica])
        waiting, sent = call("shared"), call("shared")
        await router.choose_replicas([replica], waiting)
        got = await router._choose_replica_for_request(sent)
        router.on_request_routed(sent, got.replica_id, None)
        router.on_request_completed(got.replica_id, "shared")
        got = await router._choose_replica_for_request(waiting)
        router.on_request_routed(waiting, got.replica_id, None)
        router.on_request_completed(got.replica_id, "shared")
        assert not router.bookings and router.pool.in_flight_total() == 0

    asyncio.run(scenario())


def test_the_private_parts_of_rays_router_we_rely_on() -> None:
    """`_fulfill_next_pending_request(replica, request_metadata)`, called by Ray's routing loop
    for the request it routed, and the helpers our override calls."""
    params = list(inspect.signature(RequestRouter._fulfill_next_pending_request).parameters)
    assert params == ["self", "replica", "request_metadata"]
    assert "self._fulfill_next_pending_request(\n                                replica, " \
           "request_metadata" in inspect.getsource(RequestRouter._fulfill_pending_requests)
    assert "self._pending_requests_to_fulfill" in inspect.getsource(RequestRouter.__init__)
    for helper in ("_cancel_routing_task_for_pending_request", "_record_queue_wait_time",
                   "_remove_pending_request_from_indices", "_choose_replica_for_request"):
        assert callable(getattr(RequestRouter, helper)), helper
