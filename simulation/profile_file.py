"""The profile file: what `pdserve profile` measured (or what a person wrote from published
figures), and what `pdserve simulate` reads. One definition, validated on both sides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pdserve.simulation.step_model import FEATURES, StepModel

#: Bumped when a field's meaning changes; `load` refuses other versions.
PROFILE_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepTimes(_Strict):
    """`step_model.StepModel` coefficients (seconds per unit) and how well they fit."""

    base: float = Field(..., ge=0, description="s per step")
    per_prefill_token: float = Field(..., ge=0, description="s per prompt token computed")
    per_prefill_pair: float = Field(..., ge=0, description="s per prompt attention pair")
    per_decode: float = Field(..., ge=0, description="s per decoding request")
    per_decode_context: float = Field(..., ge=0, description="s per token a decode attends to")
    per_new_request: float = Field(..., ge=0, description="s per request entering the batch")
    heldout_mape: float | None = Field(None, description="% error on steps not fitted")
    heldout_p90_ape: float | None = None
    train_mape: float | None = None
    noise_mape: float | None = Field(
        None, description="% deviation of repeated identical batches from their median: the "
        "host's own step-to-step noise, a floor for any model's error")
    steps: int | None = Field(None, description="steps measured")

    def model(self) -> StepModel:
        return StepModel(**{name: getattr(self, name) for name in FEATURES})


class KVCache(_Strict):
    num_blocks: int = Field(..., ge=1, description="KV blocks one engine holds")
    block_size: int = Field(..., ge=1, description="tokens per block")
    bytes_per_token: int | None = Field(None, ge=1, description="KV bytes per token (all layers)")


class KVTransfer(_Strict):
    """A KV pull of b bytes takes alpha_s + b / bytes_per_s; pulls share one link per pair of
    hosts (here: the machine)."""

    alpha_s: float = Field(..., ge=0)
    bytes_per_s: float = Field(..., gt=0)
    source: str = Field(..., description="how it was measured, or where the figures come from")
    samples: int | None = None


#: How a calibration relates the served engine's steps to the profiled ones
#: (`calibration.graph_overhead`'s `steps`): times a factor, plus a constant, or as profiled.
STEP_MODELS = ("scaled", "added", "profiled")
#: The default: a constant per step. Once the profile timed the engine as served (one thread on
#: its core), the served steps' extra time was its serving loop's, per step rather than per
#: unit of work; a factor also stretched every prompt step (within 15 %: v8 20 vs 18 of 24;
#: v9, held out, 17 vs 16).
DEFAULT_STEP_MODEL = "added"
#: Where calibration puts the TTFT a served graph adds per prompt token
#: (`calibration.graph_overhead`'s `prompt_cost`): engine time per prompt token computed, or
#: latency before the pools.
PROMPT_COSTS = ("engine", "graph")


class GraphOverhead(_Strict):
    """What the served graph adds over the profiled bare engine.

    - `per_request_s` + `per_prompt_token_s` × prompt tokens: latency before a request
      reaches a pool (HTTP, proxy, ingress, tokenization, hashing, routing, the stream's first
      hop): added to every request's arrival (stretched as engine steps are while the graph
      and the engines want more CPU than the host has).
    - `step_scale`: every engine step takes this many times the profiled time (measured
      1.4–2x at concurrency 1 on a 2-core box while profiles timed a two-thread engine by
      mistake; 1.06–1.18x once they timed it as served, where the difference is per step, not
      per unit of work: `per_step_s`, which calibration now fits by default).
      With `busy_core_share` calibrated, the engine times are net of what the engines lost to
      the graph at concurrency 1 (the simulated host takes that from the steps; the planner's
      closed-form estimates, which have no host, then run optimistic by as much).
    - `per_step_s`: added to every engine step (what a served engine does per step that the
      profiled one does not: KV events, the KV connector, handing outputs to its replica:
      0.4–1.1 ms on this box, `sim-validation-cpu-v8`, `-v9`).
    - `per_prefill_token_s`: added to an engine step per prompt token it computes (a served
      engine's prompt cost more than its profiled step while profiles timed a two-thread
      engine by mistake: a traced PD request's prefill engine took 104–110 ms to its first
      token at concurrency 1 where the scaled profiled step took 67; with the engine profiled
      as served it calibrates to about 0). Engine time, so it queues, time-shares and
      stretches with the engine's core, where `per_prompt_token_s` does not.
    - `cpu_per_request_s`, `cpu_per_step_s`, `cpu_per_token_s` and `host_cores`: the graph's
      own processes (proxy, ingress, replicas, Ray) use this much CPU per request, per engine
      step that hands outputs to its replica (one message however many requests it carries),
      and per streamed token, on a host of this many cores; when that
      demand (plus `background_cores`, Ray's own upkeep) exceeds the cores the engines leave
      idle, it takes from the busy cores alike and their engines' steps stretch; engines
      pinned to one core share it (`host_cpu.HostCPU`; None: each engine and the graph on
      hardware of its own).
    - `busy_core_share`: the share of that demand taken from the busy cores even while idle
      ones could hold it (threads that run where an engine's output woke them, or an engine's
      own I/O threads on its core): calibrated from the served engines' run-queue wait at
      concurrency 1, where one engine steps at a time and the graph's demand would otherwise
      never reach it.
    - `cpu_window_s`: that demand is the graph's CPU for the arrivals and streamed tokens of
      the last this many seconds, spread over them: shorter follows bursts closer. Not
      calibrated: 0.5 s fitted three earlier validations better than 2 s and three worse
      (`benchmarks/results/sim-cpu-window-cpu-v1`), and a new one, chosen before it ran,
      worse (`sim-validation-cpu-v5`)."""

    per_request_s: float = Field(0.0, ge=0)
    per_prompt_token_s: float = Field(0.0, ge=0)
    step_scale: float = Field(1.0, gt=0)
    per_step_s: float = Field(0.0, ge=0)
    per_prefill_token_s: float = Field(0.0, ge=0, description="engine time per prompt token "
                                       "computed, beyond the profiled step")
    cpu_per_request_s: float = Field(0.0, ge=0)
    cpu_per_step_s: float = Field(0.0, ge=0, description="graph CPU per engine step with "
                                  "outputs (its replica takes them in one message)")
    cpu_per_token_s: float = Field(0.0, ge=0, description="graph CPU per streamed token")
    background_cores: float = Field(0.0, ge=0, description="the graph's CPU when idle (Ray)")
    busy_core_share: float = Field(0.0, ge=0, le=1, description="of the graph's CPU demand, "
                                   "the share taken from busy cores while idle ones are free")
    host_cores: int | None = Field(None, ge=1)
    cpu_window_s: float = Field(2.0, gt=0, description="the graph's CPU demand follows the "
                                "arrivals and tokens of this many seconds")
    source: str = "not measured (0)"

    def with_cpu_window(self, seconds: float | None) -> GraphOverhead:
        """This overhead with its demand over `seconds` (None: as it is), checked as loading
        a profile checks it (`model_copy` alone would take 0 or less)."""
        if seconds is None:
            return self
        return GraphOverhead.model_validate({**self.model_dump(), "cpu_window_s": seconds})


class CoreContention(_Strict):
    """How much more CPU an engine's step takes while other engines step on the same host
    (`benchmarks/core_sharing_probe.py`'s CPU-time ratios with two engines; a CPU host only,
    with `graph_overhead.host_cores`): they compete for caches and memory bandwidth, decode
    steps (which stream the weights once per token) more than prefill steps (which reuse them).

    - `other_core_scale`: × a decode step's CPU time while engines step on other cores of the
      host (measured with one other; assumed not to grow with more: on a larger host, measure
      there).
    - `shared_core_scale`: × a decode step's CPU time while engines time-share its core (on
      top of time-sharing itself, which gives each of n steps 1/n of the core).
    - `prefill_*`: the same for a step that computes prompt tokens.
    Both at once are assumed to multiply; the one placement measured with both
    (`core-contention-cpu-v1/core-sharing-mixed.json`, minutes later) gave less than the
    product of the scales measured apart, on a box whose contention drifts that much."""

    other_core_scale: float = Field(1.0, ge=1.0)
    shared_core_scale: float = Field(1.0, ge=1.0)
    prefill_other_core_scale: float = Field(1.0, ge=1.0)
    prefill_shared_core_scale: float = Field(1.0, ge=1.0)
    source: str = "not measured (1)"

    def scale(self, prefill: bool, other_busy_cores: int, time_shared: bool) -> float:
        """How many times its CPU time a step takes, with `other_busy_cores` other cores
        stepping engines and its own core time-shared or not."""
        other, shared = ((self.prefill_other_core_scale, self.prefill_shared_core_scale)
                         if prefill else (self.other_core_scale, self.shared_core_scale))
        return (other if other_busy_cores else 1.0) * (shared if time_shared else 1.0)


class Profile(_Strict):
    version: int = PROFILE_VERSION
    created: str
    source: str = Field(..., description="`pdserve profile` command, or who wrote it from what")
    machine: dict[str, Any] = Field(default_factory=dict)
    model: str
    engine_kwargs: dict[str, Any] = Field(
        ..., description="the engine arguments profiled (vLLM's names); the simulated "
        "scheduler is built from them")
    kv_cache: KVCache
    step_times: StepTimes
    kv_transfer: KVTransfer | None = None
    graph_overhead: GraphOverhead = Field(default_factory=GraphOverhead)
    core_contention: CoreContention = Field(default_factory=CoreContention)
    startup_s: float | None = Field(
        None, ge=0, description="a replica's start-up time: what `pdserve profile` measures is "
        "the engine's own (in-process); a served replica adds its Ray actor and processes")
    hf_config: dict[str, Any] | None = Field(
        None, description="the model's `config.json` (its published architecture): the "
        "simulator builds vLLM's scheduler from it instead of fetching the model (a profile "
        "written for a model this machine does not hold)")

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(), indent=1) + "\n")


def load(path: Path) -> Profile:
    data = json.loads(Path(path).read_text())
    if data.get("version") != PROFILE_VERSION:
        raise ValueError(f"{path}: profile version {data.get('version')!r}, this pdserve "
                         f"reads version {PROFILE_VERSION}")
    return Profile.model_validate(data)
