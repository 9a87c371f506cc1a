"""A pool of simulated engine replicas: each replica's lifecycle (starting, serving, draining,
stopped), its steps on the event loop and the signals its host reports to the autoscaler; the
pool's router view (`routing.pool_state.PoolState`, fed the engines' own KV events) and the
router's choice (`routing.scorers.choose_index`; a pool routed by Ray's default
`PowerOfTwoChoicesRequestRouter`: `routing.scorers.power_of_two`, on the same view)."""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pdserve.deployments.autoscaling.signals import ReplicaSLOSignals, RequestSignals
from pdserve.routing.kv_events import index_event
from pdserve.routing.pool_state import PoolState
from pdserve.routing.scorers import RequestView, RouterSettings, choose_index, power_of_two
from pdserve.simulation.engine import SimEngine, StepBatch
from pdserve.simulation.step_model import is_prefill_step, prompt_tokens_computed

if TYPE_CHECKING:
    from pdserve.simulation.graph import Simulation


class Replica:
    """One engine replica: a simulated engine stepping on the event loop, with the latency
    and load signals its host reports to the autoscaler (`ReplicaSLOSignals`, on simulated
    time). It counts toward replica-seconds from when its start was decided (`started_s`) to
    when it stopped; it serves from `ready_s`; once draining it takes no new requests and
    stops when its last one ended."""

    def __init__(self, sim: Simulation, pool: Pool, name: str, engine: SimEngine,
                 started_s: float, rank: int, core: int) -> None:
        self.sim, self.pool, self.name, self.engine = sim, pool, name, engine
        self.rank, self.core = rank, core  # its local rank, and the cores it steps on
        self.busy = False
        self.busy_s = 0.0
        self.started_s = started_s
        self.ready_s: float | None = None
        self.stopped_s: float | None = None
        self.draining = False
        slo = sim.slo
        self.signals = ReplicaSLOSignals(slo.window_s, slo.warmup_requests,
                                         clock=lambda: sim.loop.now)
        self.tracked: dict[str, RequestSignals] = {}

    def track(self, request_id: str, prompt_tokens: int, computes_prompt: bool = True) -> None:
        """Time a request on this replica from now, as its host does (TTFT, ITL, queued
        prompt tokens, the load offered)."""
        self.tracked[request_id] = self.signals.start(prompt_tokens, computes_prompt)

    def add(self, request_id: str, tokens: list[int], max_tokens: int,
            transferred: bool = False) -> None:
        if request_id not in self.tracked:
            self.track(request_id, len(tokens), computes_prompt=not transferred)
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
        work = batch.work.values()
        seconds = (self.sim.step_model.seconds(work) * self.sim.step_scale + self.sim.per_step_s
                   + self.sim.per_prefill_token_s * prompt_tokens_computed(work))
        self.sim.cpu.run_step(self.core, seconds, lambda elapsed: self._done(batch, elapsed),
                              is_prefill_step(work))

    def _done(self, batch: StepBatch, elapsed_s: float) -> None:
        self.busy_s += elapsed_s
        self.pool.observe(self.name, self.engine.take_kv_events(), batch.kv_usage)
        for request_id in batch.sampled:
            if request_id in self.tracked:
                self.tracked[request_id].on_output(1)
        for request_id in batch.finished:
            signals = self.tracked.pop(request_id, None)
            if signals is not None:
                signals.finish()
        self.sim.on_step(self, batch)
        if self.engine.has_work():
            self._step()
        else:
            self.busy = False
            self.stop_if_drained()

    def stop_if_drained(self) -> None:
        if self.draining and self.stopped_s is None and not self.busy and not self.tracked:
            self.stopped_s = self.sim.loop.now

    @property
    def ongoing(self) -> int:
        """Requests on this replica (Ray's ongoing requests)."""
        return len(self.tracked)


#: Ray Serve's default request router (`ray.serve._private.request_router`), by class name
RAY_POWER_OF_TWO = "PowerOfTwoChoicesRequestRouter"
#: the routers the simulator routes as they do: pdserve's (scored) and Ray's default
PDSERVE_ROUTERS = ("PrefixAwareRouter", "DecodeRouter")


def simulates_power_of_two(router_class: str | None) -> bool:
    """Whether a pool's `request_router_class` (an import path, `module:Class` or
    `module.Class`) is Ray's power-of-two router; pdserve's routers (or none named) are
    scored as pdserve scores; any other router cannot be simulated and is refused by name."""
    name = re.split(r"[:.]", router_class or "")[-1]
    if name == RAY_POWER_OF_TWO:
        return True
    if name and name not in PDSERVE_ROUTERS:
        raise ValueError(f"the simulator routes as pdserve's routers or Ray's {RAY_POWER_OF_TWO}"
                         f", not {router_class!r}")
    return False


class Pool:
    """A pool's replicas and the router's view of them (`PoolState`, as the real router)."""

    def __init__(self, name: str, weights: dict[str, float], router_kwargs: dict[str, Any],
                 block_size: int, prefix_only_when_local: bool, rng: random.Random,
                 router_class: str | None = None) -> None:
        #: routed as Ray's default router: two random replicas, the shorter queue
        self.ray_power_of_two = simulates_power_of_two(router_class)
        kwargs = dict(router_kwargs) if not self.ray_power_of_two else {}
        kwargs.setdefault("weights", dict(weights))
        self.settings = RouterSettings.model_validate(kwargs)
        self.state = PoolState(name, self.settings.max_blocks_per_replica,
                               follow_kv_events=False)
        self.state.block_size = block_size
        self.replicas: dict[str, Replica] = {}  # serving: what the router picks from
        self.starting: dict[str, Replica] = {}
        self.history: list[Replica] = []
        self.waiting: deque[Callable[[], None]] = deque()  # held at the handle: no replica
        self.kv_usage: dict[str, float] = {}
        self.prefix_only_when_local = prefix_only_when_local
        self.rng = rng

    def add_replica(self, replica: Replica) -> None:
        """`replica` serves from now: routable, and what waited for a replica is sent."""
        replica.ready_s = replica.sim.loop.now
        self.starting.pop(replica.name, None)
        self.replicas[replica.name] = replica
        self.state.sync_replicas(dict.fromkeys(self.replicas))
        self.state.index.add_replica(replica.name)
        while self.waiting and self.replicas:
            self.waiting.popleft()()

    def drain(self, replica: Replica) -> None:
        """Stop routing to `replica` (the router forgets it); it stops once idle."""
        del self.replicas[replica.name]
        self.state.forget(replica.name)
        self.state.sync_replicas(dict.fromkeys(self.replicas))
        self.kv_usage.pop(replica.name, None)
        replica.draining = True
        replica.stop_if_drained()

    def observe(self, replica: str, events: list, kv_usage: float) -> None:
        if replica not in self.replicas:  # draining: the router forgot it
            return
        with self.state.lock:
            for event in events:
                index_event(self.state.index, replica, event)
        self.kv_usage[replica] = kv_usage

    def choose(self, hashes: tuple[int, ...], plan: str) -> tuple[Replica, int]:
        """The replica the router picks, and its cached-prefix blocks (as `router.choose`,
        without LoRA adapters, sessions or the opt-in `cache_headroom` scorer: every request
        is plain, and cache fill reads 0; or as Ray's power-of-two, which reads only the
        queues)."""
        use_prefix = not self.prefix_only_when_local or plan != "remote"
        hits = self.state.match(hashes) if use_prefix and hashes else {}
        loads, idle = self.state.loads(), (0, 0)
        names = list(self.replicas)
        views = [(r, hits.get(r, 0), *loads.get(r, idle), self.kv_usage.get(r, 0.0), 0.0, False,
                  0) for r in names]
        if self.ray_power_of_two:  # Ray draws a random ordered pair: ties go either way
            best = power_of_two(self.rng.sample(views, len(views)), self.rng)[0][0]
        else:
            request = RequestView(num_blocks=len(hashes), use_prefix=use_prefix)
            best = names[choose_index(request, views, self.settings, self.rng)]
        return self.replicas[best], hits.get(best, 0)
