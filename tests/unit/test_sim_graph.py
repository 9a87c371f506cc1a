"""The simulated graph on a hand-written profile: deterministic per seed, every request served,
the PD plan and the router as the real graph decides them, KV pulls one at a time on the
link, and shared prefixes routed to the replica that caches them."""

from __future__ import annotations

import pytest
from sim_profiles import ENGINE, PROFILE, model

from pdserve.simulation import traces
from pdserve.simulation.graph import Simulation
from pdserve.simulation.metrics import summarize
from pdserve.simulation.profile_file import GraphOverhead


def test_same_seed_same_run_and_every_request_served() -> None:
    trace = traces.poisson(5.0, 60, traces.mixed_lengths(600, 8, 40, 30), seed=3)
    runs = [Simulation(PROFILE, model("pd"), trace, seed=1).run() for _ in range(2)]
    assert [o.token_s for o in runs[0]] == [o.token_s for o in runs[1]]
    assert all(o.done and len(o.token_s) == o.output_tokens for o in runs[0])


def test_the_pd_plan_sends_short_prompts_local_and_long_ones_remote() -> None:
    trace = traces.poisson(2.0, 40, traces.mixed_lengths(600, 8, 40, 30), seed=4)
    sim = Simulation(PROFILE, model("pd"), trace)
    outcomes = sim.run()
    for o in outcomes:  # the default `local_prefill_below_tokens` is 128
        assert o.plan == ("remote" if o.prompt_tokens >= 128 else "local")
    remote = sum(o.plan == "remote" for o in outcomes)
    assert len(sim.transfers) == remote > 0
    for (_, end, _), (start, _, _) in zip(sim.transfers, sim.transfers[1:], strict=False):
        assert start >= end  # one pull at a time on the link
    assert all(size == 600 * 4096 for _, _, size in sim.transfers)


def test_an_idle_graph_serves_a_request_in_the_profiles_time() -> None:
    trace = [traces.TraceRequest(0.0, 128, 4)]
    (outcome,) = Simulation(PROFILE, model("colocated"), trace).run()
    step = PROFILE.step_times.model()
    prefill = step.seconds([(128, 0, True, True)]) + 0.0005
    assert outcome.ttft_s == pytest.approx(prefill + 0.05, rel=1e-9)
    decode = step.seconds([(1, 128, False, False)]) + 0.0005
    assert outcome.itls_s[0] == pytest.approx(decode, rel=1e-9)
    summary = summarize([outcome], slo_ttft_ms=1000, slo_itl_ms=100)
    assert summary["slo_met_pct"] == 100.0 and summary["completed"] == 1


def test_shared_prefixes_go_where_they_are_cached() -> None:
    pool = {"num_replicas": 4}
    trace = [traces.TraceRequest(i * 0.5, 600, 4, f"doc-{i % 2}", 512) for i in range(20)]
    sim = Simulation(PROFILE, model("colocated", colocated=pool), trace, seed=0)
    outcomes = sim.run()
    for doc in ("doc-0", "doc-1"):
        replicas = [o.replica for o, r in zip(outcomes, trace, strict=True) if r.prefix_id == doc]
        assert len(set(replicas)) == 1, f"{doc} spread over {replicas}"


def test_graph_cpu_on_a_full_host_stretches_engine_steps() -> None:
    """Two engines on two cores: with the graph's CPU demand above the cores left idle, steps
    take longer; with a core to spare for it (or no demand), they do not."""
    trace = traces.poisson(8.0, 80, traces.fixed_lengths(300, 20), seed=5)
    pools = {"colocated": {"num_replicas": 2}}

    def itl_p50(**overhead) -> float:
        profile = PROFILE.model_copy(update={"graph_overhead": GraphOverhead(**overhead)})
        sim = Simulation(profile, model("colocated", **pools), trace)
        return summarize(sim.run())["p50_itl_ms"]

    alone = itl_p50()
    busy_host = itl_p50(cpu_per_request_s=0.1, cpu_per_token_s=0.002, host_cores=2)
    spare_cores = itl_p50(cpu_per_request_s=0.1, cpu_per_token_s=0.002, host_cores=8)
    assert busy_host > alone * 1.1
    assert spare_cores == alone


def test_a_profile_of_other_engine_arguments_is_refused() -> None:
    other = PROFILE.model_copy(update={"engine_kwargs": {**ENGINE, "block_size": 64}})
    with pytest.raises(ValueError, match="block_size"):
        Simulation(other, model("colocated"), [traces.TraceRequest(0.0, 10, 1)])


def test_a_pd_model_without_prefill_replicas_prefills_on_decode() -> None:
    trace = traces.poisson(2.0, 10, traces.fixed_lengths(600, 4), seed=6)
    sim = Simulation(PROFILE, model("pd"), trace, replicas={"prefill": 0})
    outcomes = sim.run()
    assert {o.plan for o in outcomes} == {"local"} and all(o.done for o in outcomes)
    assert not sim.transfers
