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
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
#: A run whose steps carried at least this many tokens each on average separates CPU per step
#: from CPU per token (at concurrency 1 both count the same).
MIN_TOKENS_PER_STEP = 1.5


@dataclass(frozen=True)
class TrafficRun:
    """A served run's traffic and the CPU the graph's traffic roles spent on it."""

    requests: int
    tokens: int  # the client received
    steps: int  # engine steps that handed outputs to a replica, in the run's simulated replay
    handed: int  # the tokens those steps handed (PD's prefill engines' first tokens too)
    cpu_s: float


def simulated(profile: Profile, model: Any, result_file: Path, overhead: GraphOverhead,
              prompts: list[TraceRequest] | None = None) -> dict[str, Any]:
    """The run's own requests through the simulated graph with this overhead: their arrival
    times and lengths from the result file, their tokens from `prompts` (the dataset the run
    sent, in order) when given. Summarized as `metrics.summarize` does, plus the engine steps
    that handed outputs to a replica and their tokens (`HostCPU.steps_handed`)."""
    trace = read_vllm_result(result_file, prompts=prompts)
    sim = Simulation(profile.model_copy(update={"graph_overhead": overhead}), model, trace)
    return {**summarize(sim.run()), "steps_handed": sim.cpu.steps_handed,
            "tokens_handed": sim.cpu.tokens_handed}


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
    if load_runs and not cpu_by_role:
        raise ValueError("load_runs split the graph's CPU with the concurrency-1 runs': "
                         "give cpu_by_role too")
    measured_runs = [json.loads(Path(path).read_text()) for path in runs]
    upkeep: list[float] = []
    demand: list[float] = []  # per run: the graph's cores, its traffic's CPU over the run + upkeep
    for measured, roles in zip(measured_runs, cpu_by_role or [], strict=False):
        upkeep.append(sum(roles.get(k, 0.0) for k in UPKEEP_ROLES) / measured["duration"])
        demand.append(traffic_cpu_s(roles) / measured["duration"] + upkeep[-1])
    loaded = [traffic_of(json.loads(Path(path).read_text()), roles,
                         simulated(profile, model, Path(path), GraphOverhead()))
              for path, roles in load_runs or []]
    traffic: list[TrafficRun] = []
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
        if cpu_by_role:
            traffic.append(traffic_of(measured, cpu_by_role[n], bare))
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
    per_request_cpu, per_step_cpu, per_token_cpu = split_cpu(traffic, loaded)
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
        + cpu_source(traffic, loaded, per_step_cpu)
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


def traffic_cpu_s(roles: dict[str, float]) -> float:
    """CPU seconds of a run's traffic roles (`TRAFFIC_ROLES`), from its CPU by process role."""
    return sum(v for k, v in roles.items() if k.startswith(TRAFFIC_ROLES))


def traffic_of(measured: dict[str, Any], roles: dict[str, float],
               replay: dict[str, Any]) -> TrafficRun:
    """A run's traffic: its vLLM result, its CPU seconds by process role and its simulated
    replay (`simulated`: the steps that handed outputs and their tokens, counted as the
    simulated host charges them; a client cannot count them: two engines' steps and a
    replica's coalesced messages mix in what it receives)."""
    return TrafficRun(measured["completed"], measured["total_output_tokens"],
                      replay["steps_handed"], replay["tokens_handed"], traffic_cpu_s(roles))


def split_cpu(runs: Sequence[TrafficRun], loaded: Sequence[TrafficRun] = ()
              ) -> tuple[float, float, float]:
    """(CPU per request, per engine step, per token), non-negative least squares over `runs`
    (concurrency 1) and `loaded` (several requests at once). Per step apart from per token (on
    the steps and tokens the simulated host charges) only when the loaded runs' steps carried
    `MIN_TOKENS_PER_STEP` tokens or more each on average: at concurrency 1 both count the same.
    Else per request and per token received (as calibrated until 2026-12-07) when the runs
    differ in tokens per request, else all of it per request."""
    everything = [*runs, *loaded]
    if not everything:
        return 0.0, 0.0, 0.0
    import numpy as np
    from scipy.optimize import nnls

    y = np.array([r.cpu_s for r in everything], dtype=float)
    if loaded and sum(r.handed for r in loaded) >= MIN_TOKENS_PER_STEP * sum(
            r.steps for r in loaded):
        x = np.array([[r.requests, r.steps, r.handed] for r in everything], dtype=float)
        (per_request, per_step, per_token), _ = nnls(x, y)
        return float(per_request), float(per_step), float(per_token)
    x = np.array([[r.requests, r.tokens] for r in everything], dtype=float)
    if len({round(r.tokens / max(r.requests, 1)) for r in everything}) < 2:
        return float(statistics.median(y / np.maximum(x[:, 0], 1))), 0.0, 0.0
    (per_request, per_token), _ = nnls(x, y)
    return float(per_request), 0.0, float(per_token)


def cpu_source(runs: Sequence[TrafficRun], loaded: Sequence[TrafficRun], per_step: float) -> str:
    """How the graph's CPU was calibrated, for `GraphOverhead.source`."""
    if not runs:
        return ""
    split = "per request, per engine step and per token" if per_step else \
        "per request and per token"
    with_load = f", with {len(loaded)} run(s) of several requests at once" if loaded else ""
    return f"; graph CPU {split}{with_load}, and at rest, from process accounting"
