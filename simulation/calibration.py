"""What the served graph adds over the profiled bare engine, from runs of the served graph:
the difference a concurrency-1 run shows (latency per request, time per engine step), and
what the graph's own processes spent in CPU (per request, per engine step, per token, and at
rest).

Latencies are calibrated at concurrency 1 only; the CPU split may also take a closed-loop run
of a few requests at once (its steps carry several tokens each, which separates per step from
per token), so a validation at open-loop load predicts rather than fits."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from pdserve.simulation.graph import Simulation
from pdserve.simulation.metrics import summarize
from pdserve.simulation.profile_file import (
    DEFAULT_STEP_MODEL,
    PROMPT_COSTS,
    STEP_MODELS,
    GraphOverhead,
    Profile,
)
from pdserve.simulation.traces import TraceRequest, read_vllm_result

#: Process roles (`benchmarks/process_cpu.py`) whose CPU follows the traffic (the load
#: generator too, where it shares the host), and Ray's own upkeep, which runs whether or not
#: requests do.
TRAFFIC_ROLES = ("replica ", "serve proxy", "harness")
#: Simulated time between batches of warm-up requests and before a run's first request
#: (`engine_cpu_s`): longer than any takes, so each batch starts on idle engines, as vLLM's
#: benchmark sends the next only when the last has finished.
WARMUP_GAP_S = 60.0
#: The process role of a vLLM engine core (`benchmarks/process_cpu.py`).
ENGINE_ROLE = "vllm engine core"
UPKEEP_ROLES = ("ray system", "serve controller", "ray::DashboardAgent", "serve run driver",
                "ray::RuntimeEnvAgent")
#: Tokens a client receives less than this share of the run's median gap apart came from one
#: engine step (`steps_seen`): a step's tokens reach the client within a millisecond or two of
#: each other, steps of the `bench` model are 8-25 ms apart.
SAME_STEP_GAP_SHARE = 0.3
#: A run whose steps carried at least this many tokens each on average separates CPU per step
#: from CPU per token (at concurrency 1 both count the same).
MIN_TOKENS_PER_STEP = 1.5


def steps_seen(measured: dict[str, Any]) -> int:
    """Engine steps whose outputs a run's client saw, from vLLM's detailed result: its tokens'
    arrival times (start + TTFT + the gaps), grouped where they arrive closer together than
    `SAME_STEP_GAP_SHARE` of the median gap. At concurrency 1 every token is a step of its
    own; with several requests in flight a step carries one token of each."""
    import numpy as np

    times: list[float] = []
    for start, ttft, gaps in zip(measured["start_times"], measured["ttfts"], measured["itls"],
                                 strict=True):
        if not ttft:  # failed: nothing arrived
            continue
        at = start + ttft
        times.append(at)
        for gap in gaps:
            at += gap
            times.append(at)
    if not times:
        return 0
    gaps_all = [g for gaps in measured["itls"] for g in gaps]
    if not gaps_all:
        return len(times)
    threshold = SAME_STEP_GAP_SHARE * float(np.median(gaps_all))
    return 1 + int((np.diff(np.sort(times)) > threshold).sum())


def simulated(profile: Profile, model: Any, result_file: Path, overhead: GraphOverhead,
              prompts: list[TraceRequest] | None = None) -> dict[str, Any]:
    """The run's own requests through the simulated graph with this overhead: their arrival
    times and lengths from the result file, their tokens from `prompts` (the dataset the run
    sent, in order) when given."""
    trace = read_vllm_result(result_file, prompts=prompts)
    sim = Simulation(profile.model_copy(update={"graph_overhead": overhead}), model, trace)
    return summarize(sim.run())


def engine_cpu_s(profile: Profile, model: Any, result_file: Path, overhead: GraphOverhead,
                 prompts: list[TraceRequest] | None = None, warmups: int = 0,
                 warmups_at_once: int | None = None) -> float:
    """CPU seconds the simulated engines' steps held over a run's requests and, before them, the
    `warmups` copies of its first request that vLLM's benchmark sends first, `warmups_at_once`
    at a time (its `--max-concurrency`; all together without one): what per-process accounting
    of a served run's engines counts, the warm-ups' prefix-cache entries included (the copies
    share the first request's tokens only when `prompts` are given)."""
    return engine_seconds(profile, model, result_file, overhead, prompts, warmups,
                          warmups_at_once)[0]


def engine_seconds(profile: Profile, model: Any, result_file: Path, overhead: GraphOverhead,
                   prompts: list[TraceRequest] | None = None, warmups: int = 0,
                   warmups_at_once: int | None = None) -> tuple[float, float]:
    """(CPU seconds, run-queue wait seconds) of the simulated engines over a run as
    `engine_cpu_s` replays it: the wait is the time their steps were in progress without a
    whole core (`HostCPU.engine_wait_s`), what the served engines' schedstat shows."""
    trace = read_vllm_result(result_file, prompts=prompts)
    if not trace:
        return 0.0, 0.0
    at_once = max(1, warmups_at_once or warmups)
    requests = [replace(trace[0], arrival_s=(i // at_once) * WARMUP_GAP_S)
                for i in range(warmups)]
    shift = -(-warmups // at_once) * WARMUP_GAP_S
    requests += [replace(r, arrival_s=r.arrival_s + shift) for r in trace]
    sim = Simulation(profile.model_copy(update={"graph_overhead": overhead}), model, requests)
    sim.run()
    return sim.cpu.engine_cpu_s, sim.cpu.engine_wait_s


def graph_overhead(profile: Profile, model: Any, runs: list[Path],
                   cpu_by_role: list[dict[str, float]] | None = None,
                   host_cores: int | None = None, steps: str = DEFAULT_STEP_MODEL,
                   prompts: list[list[TraceRequest] | None] | None = None,
                   prompt_cost: str = "engine",
                   engine_waits: list[float] | None = None,
                   load_runs: list[tuple[Path, dict[str, float]]] | None = None
                   ) -> GraphOverhead:
    """Medians over concurrency-1 runs (vLLM benchmark result files). `steps` (`STEP_MODELS`):
    `scaled`, the served engine's steps are the measured TPOT p50 over the simulated bare
    engine's (at least 1) times the profiled ones, and the rest of the measured TTFT p50 is
    latency per request (fixed + per prompt token, over runs of different prompt lengths);
    `added` (the default), steps keep their profiled time plus the TPOT difference per step,
    and the rest of the TTFT difference is latency per request; `profiled`,
    steps keep their profiled time and only the TTFT difference is calibrated (with profiles
    of a mis-bound two-thread engine, before 2026-12-07 evening, a served engine did 1.2–1.7×
    its profiled work per step: `benchmarks/results/sim-validation-cpu-v3/
    validation-profiled.md`; with a faithful profile 1.06–1.18× at concurrency 1). With
    `cpu_by_role` (per run,
    CPU seconds by process role): the graph's CPU per request and at rest. `prompts`: per run,
    the prompts it sent (see `simulated`). `prompt_cost` (`PROMPT_COSTS`): where the part of
    that TTFT difference that grows with the prompt goes: `engine`, the served engine's steps
    take it per prompt token they compute (`per_prefill_token_s`: a traced served prefill
    took 1.6x its scaled step as profiled on two threads by mistake, and the graph does
    nothing per prompt token that costs tens of microseconds; with the engine profiled as
    served it calibrates to about 0); `graph`, latency before the pools (`per_prompt_token_s`), as
    calibrated until 2026-12-07. `engine_waits` (per run, with `cpu_by_role`: the served
    engines' run-queue wait, seconds): the share of its core an engine lost while stepping
    alone becomes the graph's `busy_core_share` (over the graph's demand then), and the engine
    times are taken net of it: the simulated host stretches each step by 1 / (1 − that share)
    at concurrency 1, so the served TPOT comes back (a scaled step scale times the kept share,
    an added time per step of served TPOT × kept share − bare TPOT, profiled steps times the
    kept share). The per-token part is fitted on whole prompts and charged on
    the tokens an engine computes: prompts a concurrency-1 run repeats from its prefix cache
    carry a little of it unseen. `load_runs` (result file, CPU seconds by role): runs of a few
    requests at once that join the CPU split only (`split_cpu`: with them, CPU per engine step
    is told from CPU per token; without, a concurrency-1 run cannot tell them apart and the
    split is per request and per token, as calibrated until 2026-12-07)."""
    if not runs:
        raise ValueError("no concurrency-1 runs to calibrate with")
    if steps not in STEP_MODELS:
        raise ValueError(f"unknown step model {steps!r}; known: {', '.join(STEP_MODELS)}")
    if prompt_cost not in PROMPT_COSTS:
        raise ValueError(f"unknown prompt cost {prompt_cost!r}; known: {', '.join(PROMPT_COSTS)}")
    measured_runs = [json.loads(Path(path).read_text()) for path in runs]
    traffic, upkeep = [], []
    demand: list[float] = []  # per run: the graph's cores, its traffic's CPU over the run + upkeep
    for measured, roles in zip(measured_runs, cpu_by_role or [], strict=False):
        traffic.append(traffic_of(measured, roles))
        upkeep.append(sum(roles.get(k, 0.0) for k in UPKEEP_ROLES) / measured["duration"])
        demand.append(traffic[-1][3] / measured["duration"] + upkeep[-1])
    loaded = [traffic_of(json.loads(Path(path).read_text()), roles)
              for path, roles in load_runs or []]
    lost, busy_share = 0.0, 0.0
    if engine_waits and cpu_by_role:
        lost, busy_share = lost_to_graph(engine_waits, cpu_by_role, demand)
    # The simulated host stretches every step by 1 / net at concurrency 1 (it gives the lost
    # share of the core to the graph): engine times are calibrated net of it, and the TTFT left
    # to explain is taken against the steps as the host will then run them.
    net = 1.0 - lost
    per_request, scale, added = [], [], []
    prompt_tokens: list[float] = []
    for n, (path, measured) in enumerate(zip(runs, measured_runs, strict=True)):
        prompt_tokens.append(statistics.median(measured["input_lens"]))
        sent = prompts[n] if prompts else None
        bare = simulated(profile, model, path, GraphOverhead(), sent)
        served_tpot_s, bare_tpot_s = measured["p50_tpot_ms"] / 1e3, bare["p50_tpot_ms"] / 1e3
        if steps == "scaled":
            scale.append(max(1.0, served_tpot_s / bare_tpot_s))
            at_c1 = GraphOverhead(step_scale=scale[-1])
        elif steps == "added":
            added.append(max(0.0, served_tpot_s * net - bare_tpot_s))
            at_c1 = GraphOverhead(step_scale=1.0 / net, per_step_s=added[-1] / net)
        else:  # profiled: steps net of the lost share, which the host gives back
            at_c1 = GraphOverhead()
        served = bare if at_c1 == GraphOverhead() else simulated(profile, model, path, at_c1, sent)
        per_request.append((measured["p50_ttft_ms"] - served["p50_ttft_ms"]) / 1e3)
    per_request_cpu, per_step_cpu, per_token_cpu = split_cpu(traffic + loaded)
    fixed, per_prompt_token = split_latency(list(zip(prompt_tokens, per_request, strict=True)))
    in_engine = prompt_cost == "engine"
    return GraphOverhead(
        per_request_s=fixed, per_prompt_token_s=0.0 if in_engine else per_prompt_token,
        per_prefill_token_s=per_prompt_token * net if in_engine else 0.0,
        step_scale={"scaled": statistics.median(scale) * net if scale else 1.0,
                    "added": 1.0, "profiled": net}[steps],
        busy_core_share=busy_share,
        per_step_s=statistics.median(added) if added else 0.0,
        cpu_per_request_s=per_request_cpu, cpu_per_step_s=per_step_cpu,
        cpu_per_token_s=per_token_cpu,
        background_cores=statistics.median(upkeep) if upkeep else 0.0,
        host_cores=host_cores if traffic else None,
        source=f"{len(runs)} concurrency-1 runs of the served graph against the simulated bare "
        "engine: " + {"scaled": "TPOT p50 ratio (step scale, median), then TTFT p50 difference",
                      "added": "TPOT p50 difference (median), TTFT p50 difference",
                      "profiled": "steps as profiled, TTFT p50 difference"}[steps]
        + " fitted as per request + per prompt token"
        + (" (engine time per prompt token computed)" if in_engine else "")
        + (("; graph CPU per request, per step and per token" if loaded
            else "; graph CPU per request, per token") + " and at rest from process accounting"
           + (f" ({len(loaded)} run(s) with several requests at once among them)"
              if loaded else "") if traffic else "")
        + (f"; engines lost {100 * lost:.1f} % of their core at concurrency 1 (run-queue "
           f"wait): {100 * busy_share:.0f} % of the graph's demand on busy cores, steps net of "
           "it" if busy_share else ""))


def lost_to_graph(engine_waits: list[float], cpu_by_role: list[dict[str, float]],
                  demand: list[float]) -> tuple[float, float]:
    """(share of its core a served engine lost while stepping, share of the graph's CPU demand
    that took it), medians over concurrency-1 runs: an engine that waited w seconds per second
    of CPU kept 1 / (1 + w) of its core (the wait is its compute thread's, the CPU its whole
    process's, within a few % of the thread's); `demand`, per run, the cores the graph
    demanded (its traffic's CPU over the run plus Ray's upkeep)."""
    lost, shares = [], []
    for wait, roles, cores in zip(engine_waits, cpu_by_role, demand, strict=True):
        engine = sum(v for k, v in roles.items() if k.startswith(ENGINE_ROLE))
        if engine <= 0 or cores <= 0:
            continue
        w = wait / engine
        lost.append(w / (1 + w))
        shares.append(min(1.0, lost[-1] / cores))
    if not lost:
        return 0.0, 0.0
    return statistics.median(lost), statistics.median(shares)


def split_latency(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """(latency per request, per prompt token) from runs of (prompt tokens, TTFT the engine
    does not explain): non-negative least squares when the runs' prompts differ in length,
    else the median, all per request."""
    if not runs:
        return 0.0, 0.0
    import numpy as np
    from scipy.optimize import nnls

    if len({round(n) for n, _ in runs}) < 2:
        return max(0.0, float(statistics.median(r for _, r in runs))), 0.0
    x = np.array([[1.0, n] for n, _ in runs])
    y = np.array([max(0.0, r) for _, r in runs])
    (fixed, per_token), _ = nnls(x, y)
    return float(fixed), float(per_token)


def traffic_of(measured: dict[str, Any], roles: dict[str, float]) -> tuple[int, int, int, float]:
    """(requests, engine steps seen, tokens, CPU seconds of the traffic's roles) of a run (its
    vLLM result; its CPU seconds by process role)."""
    return (measured["completed"], steps_seen(measured), measured["total_output_tokens"],
            sum(v for k, v in roles.items() if k.startswith(TRAFFIC_ROLES)))


def split_cpu(runs: list[tuple[int, int, int, float]]) -> tuple[float, float, float]:
    """(CPU per request, per engine step, per streamed token) from runs of (requests, steps,
    tokens, CPU seconds), non-negative least squares: per step and per token apart only when
    some run's steps carried several tokens each (`MIN_TOKENS_PER_STEP`); else per request and
    per token when the runs differ in tokens per request; else all of it per request."""
    if not runs:
        return 0.0, 0.0, 0.0
    import numpy as np
    from scipy.optimize import nnls

    x = np.array([[r, s, t] for r, s, t, _ in runs], dtype=float)
    y = np.array([c for *_, c in runs], dtype=float)
    if max(t / max(s, 1) for _, s, t, _ in runs) >= MIN_TOKENS_PER_STEP:
        (per_request, per_step, per_token), _ = nnls(x, y)
        return float(per_request), float(per_step), float(per_token)
    if len({round(t / max(r, 1)) for r, _, t, _ in runs}) < 2:
        return float(statistics.median(y / np.maximum(x[:, 0], 1))), 0.0, 0.0
    (per_request, per_token), _ = nnls(x[:, [0, 2]], y)
    return float(per_request), 0.0, float(per_token)
