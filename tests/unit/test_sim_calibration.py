"""The graph's overhead from concurrency-1 runs: its CPU split into per-request and per-token
parts, and the served engine's extra time per step as each step model places it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sim_profiles import PROFILE, model

from pdserve.simulation.calibration import (
    TrafficRun,
    engine_cpu_s,
    graph_overhead,
    simulated,
    split_cpu,
)
from pdserve.simulation.graph import Simulation
from pdserve.simulation.profile_file import STEP_MODELS, GraphOverhead
from pdserve.simulation.traces import TraceRequest


def _run(requests: int, tokens: int, steps: int | None = None, handed: int | None = None,
         per: tuple[float, float, float] = (0.05, 0.0, 0.002)) -> TrafficRun:
    """A run's traffic whose CPU is `per` (request, step, token) on its counts: at
    concurrency 1 (the default) every token is a step of its own."""
    steps = tokens if steps is None else steps
    handed = tokens if handed is None else handed
    return TrafficRun(requests, tokens, steps, handed,
                      per[0] * requests + per[1] * steps + per[2] * handed)


def test_runs_of_different_output_lengths_split_request_and_token_cpu() -> None:
    # 0.05 s per request + 0.002 s per token: 24 requests of 32 tokens, 12 of 256
    assert split_cpu([_run(24, 24 * 32), _run(12, 12 * 256)]) == pytest.approx((0.05, 0, 0.002))


def test_one_output_length_puts_everything_on_the_request() -> None:
    runs = [TrafficRun(10, 320, 320, 320, 2.0), TrafficRun(20, 640, 640, 640, 4.4)]
    assert split_cpu(runs) == pytest.approx((0.21, 0, 0))
    assert split_cpu([]) == (0.0, 0.0, 0.0)


def test_a_run_of_several_tokens_per_step_splits_step_from_token_cpu() -> None:
    # 0.02 s per request + 0.001 per step + 0.0012 per token; the concurrency-4 run's steps
    # carry 3.2 tokens each (and, as PD's replay counts them, its prefill engine's tokens)
    per = (0.02, 0.001, 0.0012)
    runs = [_run(24, 768, per=per), _run(12, 3072, per=per)]
    loaded = [_run(32, 2048, steps=672, handed=2080, per=per)]
    assert split_cpu(runs, loaded) == pytest.approx(per)
    # without it the same concurrency-1 runs put it all on the token, as before
    assert split_cpu(runs)[1:] == pytest.approx((0.0, 0.0022))
    # a loaded run whose steps carried about one token each cannot tell them apart either
    one_each = [_run(32, 2048, steps=1900, per=per)]
    assert split_cpu(runs, one_each)[1] == 0.0


def _c1_run(path: Path, tpot_ms: float, ttft_ms: float) -> Path:
    """A concurrency-1 result file of vLLM's serving benchmark: 8 requests of 64 prompt
    tokens and 32 out, one after another, with these measured medians."""
    path.write_text(json.dumps({
        "start_times": [i * 1.0 for i in range(8)], "input_lens": [64] * 8,
        "output_lens": [32] * 8, "p50_tpot_ms": tpot_ms, "p50_ttft_ms": ttft_ms,
        "ttfts": [ttft_ms / 1e3] * 8, "itls": [[tpot_ms / 1e3] * 31] * 8,
        "completed": 8, "total_output_tokens": 256, "duration": 8.0}))
    return path


@pytest.mark.parametrize("steps", STEP_MODELS)
def test_each_step_model_puts_the_served_engines_extra_time_where_it_says(
        steps: str, tmp_path: Path) -> None:
    colocated = model("colocated")
    bare = simulated(PROFILE, colocated, _c1_run(tmp_path / "bare.json", 1, 1), GraphOverhead())
    # Served: steps 1.5x the profiled ones, and 40 ms more before the first token.
    run = _c1_run(tmp_path / "c1.json", 1.5 * bare["p50_tpot_ms"], bare["p50_ttft_ms"] + 40)
    overhead = graph_overhead(PROFILE, colocated, [run], steps=steps)
    extra_step_s = 0.5 * bare["p50_tpot_ms"] / 1e3
    expected = {"scaled": (1.5, 0.0), "added": (1.0, extra_step_s), "profiled": (1.0, 0.0)}
    assert (overhead.step_scale, overhead.per_step_s) == pytest.approx(expected[steps], rel=0.02)
    if steps == "profiled":  # scaled or added steps lengthen the prefill: less is left to add
        assert overhead.per_request_s == pytest.approx(0.040, rel=0.02)
    # ... and the calibrated graph gives the served run's first token back (and its steps, but
    # where they are taken as profiled)
    served = simulated(PROFILE, colocated, run, overhead)
    assert served["p50_ttft_ms"] == pytest.approx(bare["p50_ttft_ms"] + 40, rel=0.01)
    if steps != "profiled":
        assert served["p50_tpot_ms"] == pytest.approx(1.5 * bare["p50_tpot_ms"], rel=0.02)
    assert {"scaled": "TPOT p50 ratio", "added": "TPOT p50 difference",
            "profiled": "steps as profiled"}[steps] in overhead.source


def test_an_unknown_step_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown step model 'fitted'"):
        graph_overhead(PROFILE, model("colocated"), [_c1_run(tmp_path / "c1.json", 9, 90)],
                       steps="fitted")


@pytest.mark.parametrize("at_once", [1, 2])
def test_engine_cpu_counts_the_warmup_copies_of_the_first_request(at_once: int,
                                                                   tmp_path: Path) -> None:
    colocated = model("colocated")
    run = _c1_run(tmp_path / "c1.json", 9, 90)
    alone = tmp_path / "alone.json"
    alone.write_text(json.dumps({"start_times": [0.0], "input_lens": [64], "output_lens": [32]}))
    one = engine_cpu_s(PROFILE, colocated, alone, GraphOverhead())
    plain = engine_cpu_s(PROFILE, colocated, run, GraphOverhead())
    warmed = engine_cpu_s(PROFILE, colocated, run, GraphOverhead(), warmups=2,
                          warmups_at_once=at_once)
    assert plain == pytest.approx(8 * one, rel=0.01)  # one after another: no batching
    if at_once == 1:  # one after another, as at concurrency 1
        assert warmed - plain == pytest.approx(2 * one, rel=0.01)
    else:  # sent together, they share their steps: more than one alone, less than two
        assert one * 1.05 < warmed - plain < 2 * one * 0.95


def _c1_prompts(path: Path, prompt: int, tpot_ms: float, ttft_ms: float) -> Path:
    """`_c1_run` with prompts of `prompt` tokens."""
    run = json.loads(_c1_run(path, tpot_ms, ttft_ms).read_text())
    path.write_text(json.dumps({**run, "input_lens": [prompt] * 8}))
    return path


@pytest.mark.parametrize("prompt_cost", ["engine", "graph"])
def test_ttft_that_grows_with_the_prompt_goes_where_prompt_cost_says(
        prompt_cost: str, tmp_path: Path) -> None:
    colocated = model("colocated")
    runs = []
    for prompt in (64, 512):  # served: 20 ms per request + 0.1 ms per prompt token more
        bare = simulated(PROFILE, colocated, _c1_prompts(tmp_path / "b.json", prompt, 1, 1),
                         GraphOverhead())
        runs.append(_c1_prompts(tmp_path / f"c1-{prompt}.json", prompt, bare["p50_tpot_ms"],
                                bare["p50_ttft_ms"] + 20 + 0.1 * prompt))
    overhead = graph_overhead(PROFILE, colocated, runs, steps="profiled", prompt_cost=prompt_cost)
    in_engine = prompt_cost == "engine"
    assert overhead.per_request_s == pytest.approx(0.020, rel=0.02)
    assert overhead.per_prefill_token_s == pytest.approx(1e-4 if in_engine else 0.0, rel=0.02)
    assert overhead.per_prompt_token_s == pytest.approx(0.0 if in_engine else 1e-4, rel=0.02)
    # Either way the calibrated simulation gives back the measured TTFT at concurrency 1.
    measured = json.loads(runs[1].read_text())["p50_ttft_ms"]
    assert simulated(PROFILE, colocated, runs[1], overhead)["p50_ttft_ms"] == pytest.approx(
        measured, rel=0.01)
    with pytest.raises(ValueError, match="unknown prompt cost 'ingress'"):
        graph_overhead(PROFILE, colocated, runs, prompt_cost="ingress")


def test_prompt_cost_in_the_engine_queues_where_latency_before_the_pools_does_not() -> None:
    """Two 512-token prompts at once on one engine: the second waits for the first's prefill,
    so engine time per prompt token delays it twice (its own and the first's), latency before
    the pools once (it runs beside the other request's)."""
    one = model("colocated", colocated={"num_replicas": 1})
    trace = [TraceRequest(arrival_s=0.0, prompt_tokens=512, output_tokens=8) for _ in range(2)]
    extra = 512 * 1e-4

    def last_ttft(overhead: GraphOverhead) -> float:
        profile = PROFILE.model_copy(update={"graph_overhead": overhead})
        return max(o.ttft_s for o in Simulation(profile, one, trace, seed=0).run())

    base = last_ttft(GraphOverhead())
    assert last_ttft(GraphOverhead(per_prompt_token_s=1e-4)) - base == pytest.approx(extra,
                                                                                     rel=0.05)
    assert last_ttft(GraphOverhead(per_prefill_token_s=1e-4)) - base == pytest.approx(
        2 * extra, rel=0.05)


@pytest.mark.parametrize("steps", STEP_MODELS)
def test_an_engines_wait_at_concurrency_1_puts_that_share_of_the_graph_on_busy_cores(
        steps: str, tmp_path: Path) -> None:
    """The engine waited 2 s beside 8 s of CPU: it kept 1/1.25 of its core, lost 0.2 of it to
    a graph that demanded 0.4 cores (3.2 s of traffic CPU over the 8 s run): half the graph's
    demand lands on the busy core, and the engine times are taken net of what they lost."""
    colocated = model("colocated")
    bare = simulated(PROFILE, colocated, _c1_run(tmp_path / "bare.json", 1, 1), GraphOverhead())
    run = _c1_run(tmp_path / "c1.json", 1.5 * bare["p50_tpot_ms"], bare["p50_ttft_ms"] + 40)
    roles = [{"vllm engine core": 8.0, "replica ingress": 3.2, "ray system": 0.0}]
    plain = graph_overhead(PROFILE, colocated, [run], roles, host_cores=2, steps=steps)
    waited = graph_overhead(PROFILE, colocated, [run], roles, host_cores=2, engine_waits=[2.0],
                            steps=steps)
    assert plain.busy_core_share == 0.0
    assert waited.busy_core_share == pytest.approx(0.5)
    if steps == "added":  # a served step of 1.5 bare ones, net of a fifth: 1.2, 0.2 added
        assert waited.per_step_s == pytest.approx(0.2 * bare["p50_tpot_ms"] / 1e3, rel=0.05)
        assert waited.step_scale == 1.0
    else:
        assert waited.step_scale == pytest.approx(0.8 * plain.step_scale)
    assert "lost 20.0 % of their core" in waited.source
    # the simulated host then gives back the measured TPOT at concurrency 1 where calibrated
    # (profiled steps come back as profiled), and nearly the first token: the graph's CPU per
    # request is demanded around each arrival, so the prompt's step loses a little more than
    # the average share the calibration nets out (+3-5 % here)
    served = simulated(PROFILE, colocated, run, waited)
    assert served["p50_ttft_ms"] == pytest.approx(bare["p50_ttft_ms"] + 40, rel=0.06)
    assert served["p50_tpot_ms"] == pytest.approx(
        (1.0 if steps == "profiled" else 1.5) * bare["p50_tpot_ms"], rel=0.05)


def _closed_loop_run(path: Path, requests: int, at_once: int, tokens: int) -> Path:
    """A result file of `requests` of `tokens` out, `at_once` started together (their tokens
    arriving together, 10 ms apart), each group once the last has finished."""
    path.write_text(json.dumps({
        "start_times": [(i // at_once) * (0.2 + 0.01 * tokens) for i in range(requests)],
        "ttfts": [0.1] * requests, "itls": [[0.01] * (tokens - 1)] * requests,
        "input_lens": [64] * requests, "output_lens": [tokens] * requests,
        "p50_ttft_ms": 100.0, "p50_tpot_ms": 10.0,
        "completed": requests, "total_output_tokens": requests * tokens, "duration": 9.0}))
    return path


def test_a_loaded_run_splits_the_graph_s_cpu_without_changing_its_latencies(
        tmp_path: Path) -> None:
    """c1 (8 × 32 tokens, one at a time) and c1-long (4 × 256) alone cannot tell CPU per step
    from per token; c4 (8 × 32, four at a time) can: 0.02 s per request + 0.001 per step +
    0.0012 per token, on the steps and tokens each run's simulated replay hands its replicas
    (what the simulated host charges). Its latencies take no part (only c1 runs calibrate
    them)."""
    colocated = model("colocated")
    bare = simulated(PROFILE, colocated, _c1_run(tmp_path / "bare.json", 1, 1), GraphOverhead())
    c1 = _c1_run(tmp_path / "c1.json", 1.5 * bare["p50_tpot_ms"], bare["p50_ttft_ms"] + 40)
    long = _closed_loop_run(tmp_path / "long.json", 4, 1, 256)
    c4 = _closed_loop_run(tmp_path / "c4.json", 8, 4, 32)

    def roles(path: Path) -> dict[str, float]:
        replay = simulated(PROFILE, colocated, path, GraphOverhead())
        requests = json.loads(path.read_text())["completed"]
        return {"replica ingress": 0.02 * requests + 0.001 * replay["steps_handed"]
                + 0.0012 * replay["tokens_handed"], "ray system": 0.9}

    c4_replay = simulated(PROFILE, colocated, c4, GraphOverhead())
    assert c4_replay["tokens_handed"] >= 1.5 * c4_replay["steps_handed"]  # several per step
    at_c1 = [roles(c1), roles(long)]
    alone = graph_overhead(PROFILE, colocated, [c1, long], at_c1, host_cores=2)
    loaded = graph_overhead(PROFILE, colocated, [c1, long], at_c1, host_cores=2,
                            load_runs=[(c4, roles(c4))])
    assert (loaded.cpu_per_request_s, loaded.cpu_per_step_s, loaded.cpu_per_token_s) == (
        pytest.approx((0.02, 0.001, 0.0012)))
    assert alone.cpu_per_step_s == 0.0  # per step and per token counted alike: on the token
    assert alone.cpu_per_token_s == pytest.approx(0.0022, rel=0.02)
    assert "per request, per engine step and per token, with 1 run(s)" in loaded.source
    assert (loaded.per_request_s, loaded.per_step_s, loaded.background_cores) == pytest.approx(
        (alone.per_request_s, alone.per_step_s, alone.background_cores))
    with pytest.raises(ValueError, match="give cpu_by_role too"):
        graph_overhead(PROFILE, colocated, [c1], load_runs=[(c4, roles(c4))])


def test_the_replay_counts_what_the_host_charges_pd_s_prefill_step_too() -> None:
    """A PD request prefilled remotely hands its prefill engine's first token to the prefill
    replica (one step, one token) before its decode engine's: the graph's CPU per step is
    split over the same count the simulated host charges."""
    pd = model("pd")
    sim = Simulation(PROFILE, pd, [TraceRequest(arrival_s=0.0, prompt_tokens=512,
                                                output_tokens=4)])
    (outcome,) = sim.run()
    assert outcome.plan == "remote"
    assert (sim.cpu.steps_handed, sim.cpu.tokens_handed) == (5, 5)
