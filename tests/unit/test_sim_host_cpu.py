"""A simulated CPU host's cores: engines pinned as the engine host pins them, processor sharing
on a shared core, the graph's processes on idle cores first, then on busy ones alike."""

from __future__ import annotations

import pytest
from sim_profiles import ENGINE, PROFILE, model

from pdserve.deployments.config import AppConfig
from pdserve.deployments.config.binding import engine_binding
from pdserve.deployments.engine.placement import omp_threads_bind
from pdserve.kv_transfer.ports import EngineSlot
from pdserve.simulation import traces
from pdserve.simulation.app_sim import AppSimulation
from pdserve.simulation.events import EventLoop
from pdserve.simulation.graph import Simulation
from pdserve.simulation.host_cpu import MAX_CPU_SHARE, UNPINNED, HostCPU, app_pools
from pdserve.simulation.metrics import summarize
from pdserve.simulation.profile_file import CoreContention, GraphOverhead

PD = [("m", "prefill"), ("m", "decode")]


def host(cores: int | None = 2, pinned: bool = True, contention: CoreContention | None = None,
         **overhead: float) -> HostCPU:
    return HostCPU(EventLoop(), GraphOverhead(host_cores=cores, **overhead), PD, pinned,
                   contention)


def run_steps(cpu: HostCPU, steps: list[tuple[float, int, float]]) -> dict[int, float]:
    """Start each (at, group, seconds) step; return when each ended, by position."""
    ended: dict[int, float] = {}
    for i, (at, group, seconds) in enumerate(steps):
        cpu.loop.at(at, cpu.run_step, group, seconds,
                    lambda _elapsed, i=i: ended.__setitem__(i, cpu.loop.now))
    cpu.loop.run()
    return ended


def test_an_engine_gets_the_core_the_engine_host_binds() -> None:
    """Two models of one app on a 3-core host: each engine's core is the one the engine host
    binds for its pool's place in the app (`engine_binding`) and its rank."""
    def entry(name: str, mode: str) -> dict:
        return {"model_id": name, "model": "pdserve://tiny", "mode": mode, "engine_kwargs": ENGINE}

    config = AppConfig.model_validate({"models": [entry("a", "pd"), entry("b", "colocated")]})
    cpu = HostCPU(EventLoop(), GraphOverhead(host_cores=3),
                  [(p.model, p.role) for p in config.pool_names()])
    for m in config.models:
        for role in m.pools():
            binding = engine_binding(config, m, role)
            for rank in range(3):
                bind = omp_threads_bind(EngineSlot(binding.pool_index, rank),
                                        binding.num_pools, [0, 1, 2])
                assert cpu.core_of(m.model_id, role, rank) == int(bind)
    assert [cpu.core_of("b", "colocated", r) for r in range(3)] == [2, 2, 2]
    two = host(cores=2)
    assert two.core_of("m", "decode", 1) == two.core_of("m", "decode", 0) == 1  # pd 1P+2D
    assert host(cores=2, pinned=False).core_of("m", "prefill", 0) == UNPINNED
    assert host(cores=None).core_of("m", "prefill", 0) == UNPINNED


def test_an_app_s_models_share_one_host() -> None:
    def entry(name: str) -> dict:
        return {"model_id": name, "model": "pdserve://tiny", "mode": "colocated",
                "engine_kwargs": ENGINE, "colocated": {"num_replicas": 1}}

    config = AppConfig.model_validate({"models": [entry("a"), entry("b")]})
    profile = PROFILE.model_copy(update={"graph_overhead": GraphOverhead(host_cores=2)})
    trace = [traces.TraceRequest(0.0, 10, 1)]
    sim = AppSimulation(profile, config, config.models, {"a": trace, "b": trace}, None)
    a, b = sim.sims["a"], sim.sims["b"]
    assert a.cpu is b.cpu
    assert [a.pools["colocated"].history[0].core, b.pools["colocated"].history[0].core] == [0, 1]


def test_steps_on_one_core_share_it_and_steps_on_two_do_not() -> None:
    # B starts half way through A: both at half speed until A ends, then B alone
    ended = run_steps(host(), [(0.0, 0, 1.0), (0.5, 0, 1.0)])
    assert ended[0] == pytest.approx(1.5) and ended[1] == pytest.approx(2.0)
    cpu = host()
    ended = run_steps(cpu, [(0.0, 0, 1.0), (0.5, 1, 1.0)])
    assert ended[0] == pytest.approx(1.0) and ended[1] == pytest.approx(1.5)
    assert cpu.engine_wait_s == 0.0  # a core each: nobody waited


def test_engines_stepping_at_once_slow_each_other_as_the_profile_measured() -> None:
    contention = CoreContention(other_core_scale=1.25, shared_core_scale=1.1,
                                prefill_other_core_scale=1.05)
    # B on the other core from 0.5 s: A's last 0.5 s of work takes 0.625 s (1.25x), in which
    # B does 0.5 of its work; B's last 0.5 alone. CPU used: 1.125 + 1.125 s
    cpu = host(contention=contention)
    ended = run_steps(cpu, [(0.0, 0, 1.0), (0.5, 1, 1.0)])
    assert ended[0] == pytest.approx(1.125) and ended[1] == pytest.approx(1.625)
    assert cpu.engine_cpu_s == pytest.approx(2.25)
    # two on one core: each at 1/2 of the core and 1/1.1 of its speed; no other core busy;
    # the core was busy 2.2 s
    cpu = host(contention=contention)
    ended = run_steps(cpu, [(0.0, 0, 1.0), (0.0, 0, 1.0)])
    assert list(ended.values()) == pytest.approx([2.2, 2.2])
    assert cpu.engine_cpu_s == pytest.approx(2.2)
    assert cpu.engine_wait_s == pytest.approx(2.2)  # each waited while the other ran
    # a prefill step beside a decode step on the other core: each by its own kind's scale
    cpu, ended = host(contention=contention), {}
    cpu.run_step(0, 1.0, lambda _e: ended.setdefault("prefill", cpu.loop.now), prefill=True)
    cpu.run_step(1, 1.0, lambda _e: ended.setdefault("decode", cpu.loop.now))
    cpu.loop.run()
    assert ended["prefill"] == pytest.approx(1.05)
    assert ended["decode"] == pytest.approx(1.05 + (1.0 - 1.05 / 1.25))
    # one engine alone, or no host cores (a GPU): nothing changes
    assert run_steps(host(contention=contention), [(0.0, 1, 1.0)])[0] == pytest.approx(1.0)
    ended = run_steps(host(cores=None, contention=contention), [(0.0, UNPINNED, 1.0)] * 2)
    assert list(ended.values()) == pytest.approx([1.0, 1.0])
    # on a larger host, more busy cores slow it no more than the one other measured
    three = HostCPU(EventLoop(), GraphOverhead(host_cores=3), PD, True, contention)
    assert list(run_steps(three, [(0.0, 0, 1.0), (0.0, 1, 1.0), (0.0, 2, 1.0)]).values()) \
        == pytest.approx([1.25] * 3)
    # unpinned: three steps on two cores share both, time-shared, both cores busy
    ended = run_steps(host(pinned=False, contention=contention), [(0.0, UNPINNED, 1.0)] * 3)
    assert list(ended.values()) == pytest.approx([1.5 * 1.25 * 1.1] * 3)


def test_unpinned_engines_share_all_cores_alike() -> None:
    ended = run_steps(host(pinned=False), [(0.0, UNPINNED, 1.0)] * 3)
    assert list(ended.values()) == pytest.approx([1.5] * 3)


def test_without_host_cores_a_step_takes_its_time() -> None:
    ended = run_steps(host(cores=None, background_cores=1.5), [(0.0, UNPINNED, 1.0)] * 3)
    assert list(ended.values()) == pytest.approx([1.0] * 3)


def test_a_third_step_changes_the_rates_mid_step() -> None:
    # A (2 s) and B (1 s) on core 0 from 0 s, C (1 s) joins at 1 s:
    ended = run_steps(host(), [(0.0, 0, 2.0), (0.0, 0, 1.0), (1.0, 0, 1.0)])
    # 0–1 s: A, B at 1/2 (0.5 done each); 1–2.5 s: A, B, C at 1/3 (B's last 0.5 done, A at
    # 1.0, C at 0.5); 2.5–3.5 s: A, C at 1/2 (C's last 0.5 done, A at 1.5); A alone: 4.0 s
    assert [ended[1], ended[2], ended[0]] == pytest.approx([2.5, 3.5, 4.0])


def test_the_graph_runs_on_an_idle_core_unstretched() -> None:
    cpu = host(background_cores=0.9)
    stretch: list[float] = []
    cpu.loop.at(0.0, cpu.run_step, 1, 1.0, lambda _: None)
    cpu.loop.at(0.0, cpu.run_step, 1, 1.0, lambda _: None)
    cpu.loop.at(0.5, lambda: stretch.append(cpu.graph_slowdown()))
    cpu.loop.run()
    assert stretch == [1.0]  # two engines step on core 1, core 0 holds the graph
    busy = host(background_cores=0.5)
    busy.loop.at(0.0, busy.run_step, 0, 1.0, lambda _: None)
    busy.loop.at(0.0, busy.run_step, 1, 1.0, lambda _: None)
    busy.loop.at(0.5, lambda: stretch.append(busy.graph_slowdown()))
    busy.loop.run()
    assert stretch[1] == pytest.approx(1 / 0.75)  # a quarter of each busy core


def test_a_step_on_the_wrong_kind_of_cores_is_refused() -> None:
    with pytest.raises(ValueError, match="pinned"):
        host().run_step(UNPINNED, 1.0, lambda _: None)
    with pytest.raises(ValueError, match="not pinned"):
        host(pinned=False).run_step(0, 1.0, lambda _: None)


def test_the_graph_takes_idle_cores_first_then_busy_cores_alike() -> None:
    # two steps on core 0, one on core 1, half a core of graph: a quarter of each core while
    # both are busy; once core 1 idles (at 1/0.75 s), it holds the graph and core 0 is whole
    ended = run_steps(host(background_cores=0.5),
                      [(0.0, 0, 1.0), (0.0, 0, 1.0), (0.0, 1, 1.0)])
    assert ended[2] == pytest.approx(1.0 / 0.75)
    done_by_then = 0.5 * 0.75 * ended[2]  # half a core each, less the graph's quarter
    assert ended[0] == pytest.approx(ended[2] + (1.0 - done_by_then) / 0.5)
    assert ended[1] == ended[0]
    # a core no engine steps on absorbs it; a busy core gives at most MAX_CPU_SHARE
    ended = run_steps(host(background_cores=0.9), [(0.0, 0, 1.0)])
    assert ended[0] == pytest.approx(1.0)
    ended = run_steps(host(background_cores=3.0), [(0.0, 0, 1.0), (0.0, 1, 1.0)])
    assert list(ended.values()) == pytest.approx([1.0 / (1.0 - MAX_CPU_SHARE)] * 2)


def test_a_busy_core_share_of_the_graph_lands_on_the_engines_even_beside_an_idle_core() -> None:
    # one engine stepping, the other core idle, 0.4 cores of graph: with busy_core_share 0.5
    # the engine's core gives 0.2 of itself (its step takes 1/0.8 s, it waits 0.25 s of it),
    # and the graph's own work is not stretched (an idle core could hold it all)
    cpu = host(background_cores=0.4, busy_core_share=0.5)
    stretch: list[float] = []
    cpu.loop.at(0.5, lambda: stretch.append(cpu.graph_slowdown()))
    ended = run_steps(cpu, [(0.0, 0, 1.0)])
    assert ended[0] == pytest.approx(1.0 / 0.8) and cpu.engine_wait_s == pytest.approx(0.25)
    assert stretch == [1.0]
    # both cores busy: all of the demand on them alike, as without the share
    both = run_steps(host(background_cores=0.4, busy_core_share=0.5),
                     [(0.0, 0, 1.0), (0.0, 1, 1.0)])
    assert list(both.values()) == pytest.approx([1.0 / 0.8] * 2)
    assert run_steps(host(background_cores=0.4), [(0.0, 0, 1.0)])[0] == pytest.approx(1.0)


def test_two_decode_engines_pinned_to_one_core_decode_slower_than_on_two() -> None:
    """pd 1P+2D on two cores: the decode engines share core 1 (the engine host's round-robin);
    on four cores each has its own."""
    trace = traces.poisson(8.0, 60, traces.fixed_lengths(300, 100), seed=7)

    def itl_p50(cores: int) -> float:
        profile = PROFILE.model_copy(
            update={"graph_overhead": GraphOverhead(host_cores=cores)})
        sim = Simulation(profile, model("pd"), trace, replicas={"prefill": 1, "decode": 2})
        assert [r.core for r in sim.pools["decode"].history] == ([1, 1] if cores == 2
                                                                 else [1, 3])
        return summarize(sim.run())["p50_itl_ms"]

    assert itl_p50(2) > 1.5 * itl_p50(4)


def test_a_replica_started_after_a_stop_takes_the_lowest_freed_rank() -> None:
    """Ranks 0, 1, 3 alive after rank 2 stopped: the next replica is rank 2 (as Ray Serve
    ranks them), not rank 3 (a count of the live ones)."""
    profile = PROFILE.model_copy(update={"graph_overhead": GraphOverhead(host_cores=2)})
    sim = Simulation(profile, model("colocated", colocated={"num_replicas": 4}),
                     [traces.TraceRequest(0.0, 10, 1)])
    pool = sim.pools["colocated"]
    rank_two = pool.history[2]
    pool.drain(rank_two)  # idle: stops at once
    assert rank_two.stopped_s == 0.0
    replica = sim.start_replica("colocated", ready=True)
    assert (replica.rank, replica.core) == (2, 0)


def test_one_model_of_an_app_is_placed_as_the_app_places_it() -> None:
    """`pdserve simulate --model b` of an app whose model `a` comes first: b's engines sit on
    the cores the engine host gives b's pool in the whole app (3 cores: core 2), and a
    planner's candidate in another mode takes its model's place in the app's order."""
    def entry(name: str, mode: str) -> dict:
        return {"model_id": name, "model": "pdserve://tiny", "mode": mode, "engine_kwargs": ENGINE}

    config = AppConfig.model_validate({"models": [entry("a", "pd"), entry("b", "colocated")]})
    profile = PROFILE.model_copy(update={"graph_overhead": GraphOverhead(host_cores=3)})
    b = config.models[1]
    sim = Simulation(profile, b, [traces.TraceRequest(0.0, 10, 1)],
                     replicas={"colocated": 2}, app=config)
    assert [r.core for r in sim.pools["colocated"].history] == [2, 2]
    alone = Simulation(profile, b, [traces.TraceRequest(0.0, 10, 1)], replicas={"colocated": 2})
    assert [r.core for r in alone.pools["colocated"].history] == [0, 1]
    a_colocated = config.models[0].model_copy(update={"mode": "colocated"})
    assert app_pools(config, a_colocated) == [("a", "colocated"), ("b", "colocated")]
    nobind = config.model_copy(update={"cpu_binding": "nobind"})
    loose = Simulation(profile, b, [traces.TraceRequest(0.0, 10, 1)],
                       replicas={"colocated": 2}, app=nobind)
    assert {r.core for r in loose.pools["colocated"].history} == {UNPINNED}


@pytest.mark.parametrize("window", [2.0, 0.5])
def test_the_graph_s_demand_spreads_recent_work_over_the_profile_s_window(window: float) -> None:
    # four arrivals and 100 streamed tokens at t=0: their CPU, spread over the window, while
    # they are in it; none once they have left it
    cpu = host(cpu_per_request_s=0.05, cpu_per_token_s=0.002, cpu_window_s=window)
    demands: list[float] = []
    for _ in range(4):
        cpu.request_arrived()
    cpu.step_handed(100)
    cpu.loop.at(window * 0.9, lambda: demands.append(cpu.demand()))
    cpu.loop.at(window * 1.1, lambda: demands.append(cpu.demand()))
    cpu.loop.run()
    assert demands == pytest.approx([(4 * 0.05 + 100 * 0.002) / window, 0.0])


def test_the_graph_s_demand_counts_each_step_with_outputs_once() -> None:
    # two steps of 8 tokens each and one of 1: three messages, 17 tokens
    cpu = host(cpu_per_step_s=0.004, cpu_per_token_s=0.001, cpu_window_s=1.0)
    for n in (8, 8, 1, 0):
        cpu.step_handed(n)
    assert cpu.demand() == pytest.approx(3 * 0.004 + 17 * 0.001)
    assert (cpu.steps_handed, cpu.tokens_handed) == (3, 17)
    # counted without a host too (what the calibration splits the graph's CPU over)
    bare = host(cores=None)
    bare.step_handed(4)
    assert (bare.steps_handed, bare.tokens_handed, bare.demand()) == (1, 4, 0.0)


def test_a_profile_without_a_cpu_window_keeps_two_seconds() -> None:
    older = GraphOverhead.model_validate({"per_request_s": 0.01})
    assert older.cpu_window_s == 2.0
    assert older.with_cpu_window(None) is older
    assert older.with_cpu_window(0.5).cpu_window_s == 0.5
    with pytest.raises(ValueError, match="cpu_window_s"):
        older.with_cpu_window(0.0)
