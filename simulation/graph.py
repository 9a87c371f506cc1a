"""The whole graph, simulated: a model's pools of simulated engines (vLLM's own scheduler,
profiled step times), the project's own router scoring and PD plan, KV pulls over a shared
link, and the graph's measured per-request overhead.

What is imported, not re-implemented: the engines' scheduling (`engine.SimEngine`), replica
scoring (`routing.scorers.choose_index`), the pool view a router scores from
(`routing.pool_state.PoolState`: prefix index fed by the engines' own KV events, in-flight
bookings), the KV-event semantics (`routing.kv_events.index_event`), prompt block hashes
(`routing.block_hashes.BlockHasher`) and the PD plan (`routing.plan.decide`).

What is modelled (stated, and measured by the validation table): each engine step takes what
the profile's step model says, times the served engine's step scale plus its per-step
overhead; a KV pull of b bytes occupies one link shared by all pulls for alpha + b /
bandwidth (FIFO); the graph adds its latency per request (and per prompt token) before a
request reaches a pool; on a host
whose cores the graph's own processes share with the engines, the graph's CPU demand (its CPU
per request and per streamed token times their rates over the last `CPU_WINDOW_S`) first
fills the cores no engine is stepping on, and what is left is taken from the busy engines
alike, stretching their steps; routers see each engine's KV usage as of its last step (a
real router sees it as of the last stats report, every 2 s); a prefill engine frees a
request's blocks when it finishes (a real one holds them until the decode side pulled them).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pdserve.routing.block_hashes import BlockHasher
from pdserve.routing.kv_events import index_event
from pdserve.routing.plan import PlanInputs, PlanThresholds, decide
from pdserve.routing.pool_state import PoolState
from pdserve.routing.scorers import (
    DECODE_WEIGHTS,
    PREFIX_AWARE_WEIGHTS,
    RequestView,
    RouterSettings,
    choose_index,
)
from pdserve.simulation.engine import SimEngine, StepBatch
from pdserve.simulation.events import EventLoop
from pdserve.simulation.profile_file import Profile
from pdserve.simulation.step_model import StepModel
from pdserve.simulation.traces import TraceRequest

#: The window over which the graph's CPU demand is estimated from recent arrivals.
CPU_WINDOW_S = 2.0
#: The largest share of an engine's core the graph's processes can take.
MAX_CPU_SHARE = 0.8


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


class Replica:
    """One engine replica: a simulated engine stepping on the event loop."""

    def __init__(self, sim: Simulation, pool: Pool, name: str, engine: SimEngine) -> None:
        self.sim, self.pool, self.name, self.engine = sim, pool, name, engine
        self.busy = False
        self.stepping = False
        self.busy_s = 0.0

    def add(self, request_id: str, tokens: list[int], max_tokens: int,
            transferred: bool = False) -> None:
        self.engine.add(request_id, tokens, max_tokens, arrival_time=self.sim.loop.now,
                        transferred=transferred)
        if not self.busy:
            self.busy = True
            self._step()

    def _step(self) -> None:
        batch = self.engine.step()
        if not batch.work:  # nothing schedulable now (e.g. waiting for KV space)
            self.busy = False
            return
        self.stepping = True
        seconds = ((self.sim.step_model.seconds(batch.work.values()) * self.sim.step_scale
                    + self.sim.per_step_s) * self.sim.slowdown())
        self.busy_s += seconds
        self.sim.loop.after(seconds, self._done, batch)

    def _done(self, batch: StepBatch) -> None:
        self.stepping = False
        self.pool.observe(self.name, self.engine.take_kv_events(), batch.kv_usage)
        self.sim.on_step(self, batch)
        if self.engine.has_work():
            self._step()
        else:
            self.busy = False


class Pool:
    """A pool's replicas and the router's view of them (`PoolState`, as the real router)."""

    def __init__(self, name: str, weights: dict[str, float], router_kwargs: dict[str, Any],
                 block_size: int, prefix_only_when_local: bool, rng: random.Random) -> None:
        kwargs = dict(router_kwargs)
        kwargs.setdefault("weights", dict(weights))
        self.settings = RouterSettings.model_validate(kwargs)
        self.state = PoolState(name, self.settings.max_blocks_per_replica,
                               follow_kv_events=False)
        self.state.block_size = block_size
        self.replicas: dict[str, Replica] = {}
        self.kv_usage: dict[str, float] = {}
        self.prefix_only_when_local = prefix_only_when_local
        self.rng = rng

    def add_replica(self, replica: Replica) -> None:
        self.replicas[replica.name] = replica
        self.state.sync_replicas(dict.fromkeys(self.replicas))
        self.state.index.add_replica(replica.name)

    def observe(self, replica: str, events: list, kv_usage: float) -> None:
        with self.state.lock:
            for event in events:
                index_event(self.state.index, replica, event)
        self.kv_usage[replica] = kv_usage

    def choose(self, hashes: tuple[int, ...], plan: str) -> tuple[Replica, int]:
        """The replica the router picks, and its cached-prefix blocks (as `router.choose`,
        without LoRA adapters, sessions or the opt-in `cache_headroom` scorer: every request
        is plain, and cache fill reads 0)."""
        use_prefix = not self.prefix_only_when_local or plan != "remote"
        hits = self.state.match(hashes) if use_prefix and hashes else {}
        loads, idle = self.state.loads(), (0, 0)
        names = list(self.replicas)
        views = [(r, hits.get(r, 0), *loads.get(r, idle), self.kv_usage.get(r, 0.0), 0.0, False)
                 for r in names]
        request = RequestView(num_blocks=len(hashes), use_prefix=use_prefix)
        best = names[choose_index(request, views, self.settings, self.rng)]
        return self.replicas[best], hits.get(best, 0)


def check_profile_fits(profile: Profile, model: Any) -> None:
    """The profile must be of the model and engine arguments the config serves: the simulated
    engines are built from the profile, the pools and routing from the config."""
    if profile.model != model.model or profile.engine_kwargs != model.engine_kwargs:
        differs = sorted(k for k in set(profile.engine_kwargs) | set(model.engine_kwargs)
                         if profile.engine_kwargs.get(k) != model.engine_kwargs.get(k))
        raise ValueError(f"the profile is of {profile.model!r} with other engine arguments "
                         f"({', '.join(differs) or 'none'}) than model {model.model_id!r} of the "
                         f"config ({model.model!r}): profile that config")


class Simulation:
    """One model's pools (as its `ModelConfig` says) over one trace."""

    def __init__(self, profile: Profile, model: Any, trace: list[TraceRequest],
                 seed: int = 0, replicas: dict[str, int] | None = None) -> None:
        from vllm.engine.arg_utils import EngineArgs

        from pdserve.models import resolve_model

        self.loop = EventLoop()
        self.profile, self.model, self.trace = profile, model, trace
        self.step_model: StepModel = profile.step_times.model()
        overhead = profile.graph_overhead
        self.per_step_s = overhead.per_step_s
        self.step_scale = overhead.step_scale
        self.per_request_s = overhead.per_request_s
        self.per_prompt_token_s = overhead.per_prompt_token_s
        self.cpu_per_request_s = overhead.cpu_per_request_s
        self.cpu_per_token_s = overhead.cpu_per_token_s
        self._recent_tokens: deque[tuple[float, int]] = deque()
        self._recent_token_count = 0
        self.background_cores = overhead.background_cores
        self.host_cores = overhead.host_cores
        self._recent_arrivals: deque[float] = deque()
        check_profile_fits(profile, model)
        kwargs = {"model": str(resolve_model(model.model)), **profile.engine_kwargs}
        self._engine_args = EngineArgs(**kwargs)
        base = self._engine_args.create_engine_config()
        self.block_size = base.cache_config.block_size
        self.hasher = BlockHasher(self.block_size, base.cache_config.prefix_caching_hash_algo)
        self.vocab = base.model_config.get_vocab_size()
        self.rng = random.Random(seed)
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
        routing = model.routing
        self.thresholds = PlanThresholds(routing.local_prefill_below_tokens,
                                         routing.max_prefill_queue_per_replica)
        self.prefill_in_flight = 0  # what the ingress counts for the plan (PlanInputs)
        self.link_free_at = 0.0
        self.transfers: list[tuple[float, float, int]] = []  # (start, end, bytes)
        self._requests: dict[str, tuple[int, list[int], tuple[int, ...]]] = {}

    # -- set-up -------------------------------------------------------------------------
    def _pool(self, role: str, weights: dict[str, float], config: Any, prefix_only: bool,
              count: int | None) -> None:
        router = (config.request_router_config or {}).get("request_router_kwargs", {})
        pool = Pool(role, weights, router, self.block_size, prefix_only, self.rng)
        if count is None:
            auto = config.autoscaling_config or {}
            count = int(auto.get("initial_replicas", auto.get("min_replicas",
                                                               config.num_replicas)))
        if count < 1 and role != "prefill":
            raise ValueError(f"the {role} pool needs at least one replica to simulate")
        for n in range(count):  # a PD model without prefill replicas prefills locally
            engine = SimEngine(self._engine_args.create_engine_config(),
                               self.profile.kv_cache.num_blocks, kv_events=True,
                               pulls_kv=role == "decode")
            pool.add_replica(Replica(self, pool, f"{role}-{n}", engine))
        self.pools[role] = pool

    # -- requests -----------------------------------------------------------------------
    def run(self, until_s: float | None = None) -> list[Outcome]:
        for i, request in enumerate(self.trace):
            self.loop.at(request.arrival_s + self.per_request_s
                         + self.per_prompt_token_s * request.prompt_tokens, self._arrive, i)
        self.loop.run(until_s)
        return self.outcomes

    def slowdown(self) -> float:
        """How much longer a step takes than alone, while the graph's processes want more CPU
        than the cores no engine is stepping on (1.0 when the graph has cores to spare)."""
        if not self.host_cores or not (self.cpu_per_request_s or self.cpu_per_token_s
                                       or self.background_cores):
            return 1.0
        recent, now = self._recent_arrivals, self.loop.now
        while recent and recent[0] < now - CPU_WINDOW_S:
            recent.popleft()
        tokens = self._recent_tokens
        while tokens and tokens[0][0] < now - CPU_WINDOW_S:
            self._recent_token_count -= tokens.popleft()[1]
        demand = (self.background_cores  # cores
                  + (self.cpu_per_request_s * len(recent)
                     + self.cpu_per_token_s * self._recent_token_count) / CPU_WINDOW_S)
        stepping = sum(r.stepping for p in self.pools.values() for r in p.replicas.values())
        spare = max(0, self.host_cores - stepping)
        share = min(MAX_CPU_SHARE, max(0.0, demand - spare) / max(1, stepping))
        return 1.0 / (1.0 - share)

    def _arrive(self, i: int) -> None:
        if self.host_cores:
            self._recent_arrivals.append(self.loop.now)
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
        _, tokens, hashes = self._requests[request_id.split(":")[0]]
        replica, hits = pool.choose(hashes, plan)
        if not request_id.endswith(":p"):
            self.outcomes[self._requests[request_id][0]].replica = replica.name
        pool.state.begin(replica.name, request_id, max(0, len(tokens) - hits * self.block_size),
                         hashes)
        replica.add(request_id, tokens, max_tokens)

    def on_step(self, replica: Replica, batch: StepBatch) -> None:
        now = self.loop.now
        if batch.sampled and self.host_cores:
            self._recent_tokens.append((now, len(batch.sampled)))
            self._recent_token_count += len(batch.sampled)
        for request_id in batch.sampled:
            if not request_id.endswith(":p"):
                self.outcomes[self._requests[request_id][0]].token_s.append(now)
        for request_id in batch.finished:
            replica.pool.state.end(replica.name, request_id,
                                   self._requests[request_id.split(":")[0]][2])
            if request_id.endswith(":p"):
                self.prefill_in_flight -= 1
                self._pull(request_id.removesuffix(":p"))

    def _pull(self, key: str) -> None:
        """The decode replica pulls the prompt's KV (what its prefix cache lacks) over the
        shared link, then decodes."""
        i, tokens, hashes = self._requests[key]
        decode = self.pools["decode"]
        replica, _ = decode.choose(hashes, "remote")
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
    def replica_seconds(self) -> float:
        end = max((o.token_s[-1] for o in self.outcomes if o.token_s), default=0.0)
        return end * sum(len(p.replicas) for p in self.pools.values())

    def busy_seconds(self) -> dict[str, float]:
        return {name: r.busy_s for pool in self.pools.values() for name, r in pool.replicas.items()}
