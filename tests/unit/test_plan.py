"""The PD plan at its thresholds."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pdserve.decode.orchestrator import Planner
from pdserve.deployments.config.models import ModelConfig
from pdserve.deployments.frontend.pool_calls import make_planner
from pdserve.routing.plan import Plan, PlanInputs, PlanThresholds, decide
from pdserve.routing.pool_state import PoolState
from pdserve.routing.types import RoutingInfo

THRESHOLDS = PlanThresholds(local_prefill_below_tokens=64, max_prefill_queue_per_replica=4)


def inputs(prompt: int = 512, hits: int = 0, in_flight: int = 0, replicas: int = 2) -> PlanInputs:
    return PlanInputs(prompt_tokens=prompt, block_size=32, decode_hit_blocks=hits,
                      prefill_in_flight=in_flight, prefill_replicas=replicas)


@pytest.mark.parametrize(
    ("prompt", "hits", "kind"),
    [
        (63, 0, "local"),  # 63 uncached < 64
        (64, 0, "remote"),  # exactly at the threshold
        (512, 14, "remote"),  # 512 - 14 * 32 = 64 uncached on the best decode replica
        (512, 15, "local"),  # 32 uncached
        (512, 16, "local"),  # everything cached there
    ],
)
def test_uncached_tokens_below_threshold_prefill_locally(prompt: int, hits: int, kind: str) -> None:
    plan = decide(inputs(prompt=prompt, hits=hits), THRESHOLDS, None)
    assert plan.kind == kind
    assert plan.reason == ("short_uncached" if kind == "local" else "disaggregated")


def test_a_backed_up_prefill_pool_sends_prefills_local() -> None:
    assert decide(inputs(in_flight=8), THRESHOLDS, None).kind == "remote"  # 4 per replica
    plan = decide(inputs(in_flight=9), THRESHOLDS, None)
    assert (plan.kind, plan.reason) == ("local", "prefill_queue")


def test_requests_that_need_a_local_prefill_keep_their_reason() -> None:
    plan = decide(inputs(), THRESHOLDS, "n>1")
    assert (plan.kind, plan.reason) == ("local", "n>1")


def test_threshold_zero_always_disaggregates_when_the_pool_has_room() -> None:
    always = PlanThresholds(local_prefill_below_tokens=0, max_prefill_queue_per_replica=4)
    assert decide(inputs(prompt=1), always, None).kind == "remote"


def pd_planner(prefill: PoolState) -> Planner:
    model = ModelConfig(model_id="m", model="m", mode="pd",
                        routing={"local_prefill_below_tokens": 0})
    return make_planner(model, {"prefill": prefill, "decode": PoolState("app/decode")}, 16)


def test_a_prefill_pool_without_a_replica_plans_a_local_prefill() -> None:
    prefill = PoolState("app/prefill", follow_kv_events=False)
    planner = pd_planner(prefill)
    info = RoutingInfo(prompt_tokens=512)
    # before the pool's router reported (it starts with the first prefill call): remote
    assert planner(info, None) == Plan("remote", "disaggregated")
    prefill.sync_replicas({"p1": None})  # a replica without KV events counts
    assert planner(info, None) == Plan("remote", "disaggregated")
    prefill.forget("p1")  # died; Ray starts another: do not wait out the prefill deadline
    assert planner(info, None) == Plan("local", "no_prefill_replica")



def test_the_plan_counts_no_cache_on_a_replica_the_request_avoids() -> None:
    decode = PoolState("app/decode")
    with decode.lock:
        decode.index.store("d0", list(range(32)))  # the whole prompt, on a replica that died
    model = ModelConfig(model_id="m", model="m", mode="pd",
                        routing={"local_prefill_below_tokens": 64})
    planner = make_planner(model, {"prefill": PoolState("app/prefill"), "decode": decode}, 16)
    info = RoutingInfo(block_hashes=tuple(range(32)), prompt_tokens=512)
    assert planner(info, None) == Plan("local", "short_uncached")
    assert planner(replace(info, avoid=("d0",)), None) == Plan("remote", "disaggregated")
