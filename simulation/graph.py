"""The whole graph, simulated: a model's pools of simulated engines (vLLM's own scheduler,
profiled step times), the project's own router scoring and PD plan, KV pulls over a shared
link, and the graph's measured per-request overhead.

What is imported, not re-implemented (through `replicas.Pool` where a pool's router acts):
the engines' scheduling (`engine.SimEngine`), replica scoring (`routing.scorers.choose_index`),
the pool view a router scores from
(`routing.pool_state.PoolState`: prefix index fed by the engines' own KV events, in-flight
bookings), the KV-event semantics (`routing.kv_events.index_event`), prompt block hashes
(`routing.block_hashes.BlockHasher`) and the PD plan (`routing.plan.decide`).

What is modelled (stated, and measured by the validation table): each engine step takes what
the profile's step model says, times the served engine's step scale plus its per-step
overhead; a KV pull of b bytes occupies one link shared by all pulls for alpha + b /
bandwidth (FIFO); the graph adds its latency per request (and per prompt token) before a
request reaches a pool (stretched while the host's cores are short); on a CPU host the
engines share the cores they are pinned to with each other and with the graph's own processes
(`host_cpu.HostCPU`); routers see each engine's KV usage as of its last step (a real router
sees it as of the last stats report, every 2 s); a prefill engine frees a request's blocks
when it finishes (a real one holds them until the decode side pulled them).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdserve.deployments.config.slo import SLOTargets
from pdserve.routing.block_hashes import BlockHasher
from pdserve.routing.plan import PlanInputs, PlanThresholds, decide
from pdserve.routing.scorers import DECODE_WEIGHTS, PREFIX_AWARE_WEIGHTS
from pdserve.simulation.engine import SimEngine, StepBatch
from pdserve.simulation.engine_config import check_profile_fits, engine_args
from pdserve.simulation.events import EventLoop
from pdserve.simulation.host_cpu import HostCPU, app_pools
from pdserve.simulation.profile_file import Profile
from pdserve.simulation.profile_file import load as load_profile
from pdserve.simulation.replicas import Pool, Replica
from pdserve.simulation.step_model import StepModel
from pdserve.simulation.traces import TraceRequest


@dataclass
class Outcome:
    """One request as its client saw it."""

    index: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    plan: str = ""  # colocated | remote | local
    replica: str = ""  # the replica that streamed its tokens
    token_s: list[float] = field(default_factory=list)  # when each token reached the client

    @property
    def ttft_s(self) -> float | None:
        return self.token_s[0] - self.arrival_s if self.token_s else None

    @property
    def itls_s(self) -> list[float]:
        return [b - a for a, b in zip(self.token_s, self.token_s[1:], strict=False)]

    @property
    def done(self) -> bool:
        return len(self.token_s) >= self.output_tokens


class Simulation:
    """One model's pools (as its `ModelConfig` says) over one trace."""

    def __init__(self, profile: Profile, model: Any, trace: list[TraceRequest],
                 seed: int = 0, replicas: dict[str, int] | None = None,
                 autoscaling: str | None = None, startup_s: float | None = None,
                 replica_budget: int | None = None, oversubscribe_cores: bool = False,
                 loop: EventLoop | None = None, scaled_by_app: bool = False,
                 app: Any = None, cpu: HostCPU | None = None) -> None:
        """`replicas`: fixed counts per role (no autoscaling); otherwise pools with an
        `autoscaling_config` start at its initial (or minimum) count and are autoscaled by
        `autoscaling` (`autoscaler.POLICIES`; None: fixed at that count). `startup_s`: a new
        replica's start-up time (default: the profile's). `replica_budget`,
        `oversubscribe_cores`: the app's. `loop`: a clock shared with the app's other models
        (`app_sim.AppSimulation`); `scaled_by_app`: its autoscaler steers this model's pools.
        `app`: the model's app (its `cpu_binding` and pool order place the engines on a CPU
        host's cores as the engine host does; default: the model alone, pinned); `cpu`: the
        host shared with the app's other models (default: one of this model's)."""
        self.loop = loop or EventLoop()
        self.profile, self.model, self.trace = profile, model, trace
        self.step_model: StepModel = profile.step_times.model()
        overhead = profile.graph_overhead
        self.per_step_s = overhead.per_step_s
        self.step_scale = overhead.step_scale
        self.per_request_s = overhead.per_request_s
        self.per_prompt_token_s = overhead.per_prompt_token_s
        self.per_prefill_token_s = overhead.per_prefill_token_s
        self.cpu = cpu or HostCPU(self.loop, overhead, app_pools(app, model),
                                  app is None or app.cpu_binding == "auto",
                                  profile.core_contention)
        check_profile_fits(profile, model)
        self._engine_args = engine_args(profile, model)
        base = self._engine_args.create_engine_config()
        self.block_size = base.cache_config.block_size
        self.scheduler_config = base.scheduler_config
        self.hasher = BlockHasher(self.block_size, base.cache_config.prefix_caching_hash_algo)
        self.vocab = base.model_config.get_vocab_size()
        self.rng = random.Random(seed)
        self.slo: SLOTargets = model.slo or SLOTargets()
        self.startup_s = (profile.startup_s or 0.0) if startup_s is None else startup_s
        self.ended = 0  # requests their engine finished (all their tokens, or stopped short)
        self.outcomes = [Outcome(i, r.arrival_s, r.prompt_tokens, r.output_tokens)
                         for i, r in enumerate(trace)]
        self.pools: dict[str, Pool] = {}
        counts = replicas or {}
        if model.mode == "embed":
            raise ValueError(f"model {model.model_id!r} embeds: nothing to simulate")
        weights = {"prefill": PREFIX_AWARE_WEIGHTS, "decode": DECODE_WEIGHTS,
                   "colocated": PREFIX_AWARE_WEIGHTS}
        for role, config in model.pools().items():
            self._pool(role, weights[role], config, role == "decode", counts.get(role))
        self.initial_replicas = {role: len(pool.replicas) for role, pool in self.pools.items()}
        routing = model.routing
        self.thresholds = PlanThresholds(routing.local_prefill_below_tokens,
                                         routing.max_prefill_queue_per_replica)
        self.prefill_in_flight = 0  # what the ingress counts for the plan (PlanInputs)
        self.link_free_at = 0.0
        self.transfers: list[tuple[float, float, int]] = []  # (start, end, bytes)
        self._requests: dict[str, tuple[int, list[int], tuple[int, ...]]] = {}
        self.autoscaler = None
        if autoscaling is not None and replicas is None:
            from pdserve.simulation.autoscaler import Autoscaler

            if any(config.autoscaling_config for config in model.pools().values()):
                self.autoscaler = Autoscaler(self, autoscaling, replica_budget,
                                             oversubscribe_cores, planner_profiles([model]))
        # a pool without replicas is served once the autoscaler starts one (this model's, or
        # the app's when the clock is shared)
        scaled = ({role for role, c in model.pools().items() if c.autoscaling_config}
                  if self.autoscaler is not None or scaled_by_app else set())
        idle = [role for role, pool in self.pools.items() if role != "prefill"
                and not pool.replicas and role not in scaled]
        if idle:
            raise ValueError(f"the {idle[0]} pool needs at least one replica to simulate "
                             "(or autoscaling from zero)")

    @property
    def host_cores(self) -> int | None:
        """The CPU host's cores (None: each engine on hardware of its own)."""
        return self.cpu.cores

    # -- set-up -------------------------------------------------------------------------
    def _pool(self, role: str, weights: dict[str, float], config: Any, prefix_only: bool,
              count: int | None) -> None:
        routing = config.request_router_config or {}
        pool = Pool(role, weights, routing.get("request_router_kwargs", {}), self.block_size,
                    prefix_only, self.rng, routing.get("request_router_class"))
        auto = config.autoscaling_config
        if count is None:
            count = (int(auto.get("initial_replicas") or auto.get("min_replicas", 1)) if auto
                     else config.num_replicas)
        self.pools[role] = pool
        for _ in range(count):  # a PD model without prefill replicas prefills locally
            self.start_replica(role, ready=True)

    def start_replica(self, role: str, ready: bool = False) -> Replica:
        """A new replica of pool `role`: serving now (`ready`) or after the start-up time."""
        pool = self.pools[role]
        engine = SimEngine(self._engine_args.create_engine_config(),
                           self.profile.kv_cache.num_blocks, kv_events=True,
                           pulls_kv=role == "decode")
        # its rank among the pool's replicas alive, and so its core (as Ray Serve ranks them
        # and the engine host pins them)
        ranks = {r.rank for r in pool.history if r.stopped_s is None}
        rank = next(i for i in itertools.count() if i not in ranks)
        core = self.cpu.core_of(self.model.model_id, role, rank)
        replica = Replica(self, pool, f"{role}-{len(pool.history)}", engine, self.loop.now,
                          rank, core)
        pool.history.append(replica)
        if ready or self.startup_s <= 0:
            pool.add_replica(replica)
        else:
            pool.starting[replica.name] = replica
            self.loop.after(self.startup_s, self._ready, replica)
        return replica

    def _ready(self, replica: Replica) -> None:
        if replica.stopped_s is None:  # not stopped while starting
            replica.pool.add_replica(replica)

    def stop_replica(self, role: str) -> Replica | None:
        """Stop one replica of pool `role`, as Ray does: a starting one first (the newest),
        else the newest serving one, which drains."""
        pool = self.pools[role]
        if pool.starting:
            replica = pool.starting.pop(list(pool.starting)[-1])
            replica.stopped_s = self.loop.now
            return replica
        if not pool.replicas:
            return None
        replica = pool.replicas[list(pool.replicas)[-1]]
        pool.drain(replica)
        return replica

    # -- requests -----------------------------------------------------------------------
    def run(self, until_s: float | None = None) -> list[Outcome]:
        if self.autoscaler is not None:
            self.autoscaler.start()
        self.schedule()
        self.loop.run(until_s)
        return self.outcomes

    def schedule(self) -> None:
        """Put the trace's arrivals on the clock."""
        for i, request in enumerate(self.trace):
            self.loop.at(request.arrival_s, self._enter, i)

    def _enter(self, i: int) -> None:
        """A request reaches the graph: its latency before a pool (HTTP, ingress,
        tokenization, routing) is CPU work of the graph's processes, stretched while the host's
        cores are short (`HostCPU.graph_slowdown`)."""
        latency = self.per_request_s + self.per_prompt_token_s * self.trace[i].prompt_tokens
        self.loop.after(latency * self.cpu.graph_slowdown(), self._arrive, i)

    def _arrive(self, i: int) -> None:
        self.cpu.request_arrived()
        request = self.trace[i]
        tokens = request.token_ids(i, self.vocab)
        hashes = self.hasher(tokens)
        key = f"r{i}"
        self._requests[key] = (i, tokens, hashes)
        if "colocated" in self.pools:
            self.outcomes[i].plan = "colocated"
            self._send(self.pools["colocated"], key, "colocated", request.output_tokens)
            return
        decode = self.pools["decode"]
        plan = decide(PlanInputs(prompt_tokens=len(tokens), block_size=self.block_size,
                                 decode_hit_blocks=decode.state.best_hit(hashes),
                                 prefill_in_flight=self.prefill_in_flight,
                                 prefill_replicas=len(self.pools["prefill"].replicas)),
                      self.thresholds, None)
        self.outcomes[i].plan = plan.kind
        if plan.kind == "local":
            self._send(decode, key, "local", request.output_tokens)
        else:
            self.prefill_in_flight += 1
            self._send(self.pools["prefill"], key + ":p", "remote", 1)

    def _send(self, pool: Pool, request_id: str, plan: str, max_tokens: int) -> None:
        if not pool.replicas:  # none serving (scaled to zero, or starting): the handle holds it
            pool.waiting.append(lambda: self._send(pool, request_id, plan, max_tokens))
            return
        _, tokens, hashes = self._requests[request_id.split(":")[0]]
        replica, hits = pool.choose(hashes, plan)
        if not request_id.endswith(":p"):
            self.outcomes[self._requests[request_id][0]].replica = replica.name
        pool.state.begin(replica.name, request_id, max(0, len(tokens) - hits * self.block_size),
                         hashes)
        replica.add(request_id, tokens, max_tokens)

    def on_step(self, replica: Replica, batch: StepBatch) -> None:
        now = self.loop.now
        self.cpu.step_handed(len(batch.sampled))
        for request_id in batch.sampled:
            if not request_id.endswith(":p"):
                self.outcomes[self._requests[request_id][0]].token_s.append(now)
        for request_id in batch.finished:
            replica.pool.state.end(replica.name, request_id,
                                   self._requests[request_id.split(":")[0]][2])
            if not request_id.endswith(":p"):
                self.ended += 1  # done, or stopped short (e.g. at max_model_len)
            if request_id.endswith(":p"):
                self.prefill_in_flight -= 1
                self._pull(request_id.removesuffix(":p"))

    def _pull(self, key: str) -> None:
        """The decode replica pulls the prompt's KV (what its prefix cache lacks) over the
        shared link, then decodes."""
        i, tokens, hashes = self._requests[key]
        decode = self.pools["decode"]
        if not decode.replicas:
            decode.waiting.append(lambda: self._pull(key))
            return
        replica, _ = decode.choose(hashes, "remote")
        replica.track(key, len(tokens), computes_prompt=False)
        self.outcomes[i].replica = replica.name
        cached = decode.state.cached(hashes).get(replica.name, 0) * self.block_size
        transfer = self.profile.kv_transfer
        bytes_ = max(0, len(tokens) - cached) * (self.profile.kv_cache.bytes_per_token or 0)
        seconds = (transfer.alpha_s + bytes_ / transfer.bytes_per_s) if transfer else 0.0
        start = max(self.loop.now, self.link_free_at)
        self.link_free_at = start + seconds
        self.transfers.append((start, self.link_free_at, bytes_))
        decode.state.begin(replica.name, key, 0, hashes)
        self.loop.at(self.link_free_at, self._decode_after_pull, replica, key)

    def _decode_after_pull(self, replica: Replica, key: str) -> None:
        i, tokens, _ = self._requests[key]
        replica.add(key, tokens, self.trace[i].output_tokens, transferred=True)

    # -- results --------------------------------------------------------------------------
    def last_token_s(self) -> float:
        return max((o.token_s[-1] for o in self.outcomes if o.token_s), default=0.0)

    def replica_seconds(self, end: float | None = None) -> float:
        """Replica lifetimes up to `end` (default: the last token; from a start's decision to
        its stop)."""
        end = self.last_token_s() if end is None else end
        return sum(max(0.0, min(end, r.stopped_s if r.stopped_s is not None else end)
                       - r.started_s)
                   for pool in self.pools.values() for r in pool.history)

    @property
    def all_done(self) -> bool:
        return self.ended == len(self.outcomes)

    def busy_seconds(self) -> dict[str, float]:
        return {r.name: r.busy_s for pool in self.pools.values() for r in pool.history}


def planner_profiles(models: list[Any]) -> dict[str, Profile]:
    """Each model's `planner.profile`, read (a path relative to where this runs)."""
    return {m.model_id: load_profile(Path(m.planner.profile)) for m in models if m.planner}
