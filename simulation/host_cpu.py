"""A simulated CPU host's cores, shared by the engines pinned to them and the graph's processes.

A CPU engine's threads are pinned (`placement.omp_threads_bind`, the serving code's own rule:
core (rank × pools + pool) mod cores, one worker per engine here; so on two cores pd's prefill
engines all share core 0 and its decode engines core 1, and colocated ×3's third engine shares
the first one's core). Engines on one core share it as the OS scheduler shares it:
processor sharing, each step in progress there advancing at 1/n of the core's speed while n
steps run on it, recomputed whenever a step starts or ends anywhere on the host. Engines not
pinned (`cpu_binding: nobind`) share all the cores alike. Measured on this 2-core box
(`plan-validation-cpu-v1`): two decode engines pinned to one core stepped at twice pd 1P+1D's
inter-token latency, where sharing all cores alike had predicted almost none.

The graph's processes (proxy, ingress, replicas, Ray) are not pinned: their CPU demand (CPU per
request, per engine step with outputs and per streamed token times their rates over the last
`cpu_window_s` (a profile's
`graph_overhead`; 2 s unless set), plus Ray's upkeep)
first fills the cores no engine steps on (all but a profile's `busy_core_share` of it, which
lands on the busy cores even then: calibrated from the engines' run-queue wait, 0 unless
calibrated); what is left is taken from the busy cores alike, at most `MAX_CPU_SHARE` of each;
the demand is re-read when a step starts or ends, not between.
(Steering it to the least loaded cores first, as a load balancer would, was tried: measured
in `plan-validation-cpu-v2` the misses it predicted were of the wrong kind — TTFT where the
real ones were gaps, gaps where there were none.)

One host holds all of an app's models (`app_sim`): its pools are numbered in the app's order,
as the engine host numbers them. Ray Serve gives a new replica the lowest free rank, as here;
when it renumbers ranks to close a gap, a running engine keeps the cores of its old rank, which
this model does not follow (it is optimistic then: a later replica may share that core).

Engines stepping at once also slow each other's work, beyond sharing a core's time: they
compete for caches and memory bandwidth (`profile_file.CoreContention`, measured by
`benchmarks/core_sharing_probe.py`): a step's remaining work advances slower by its kind's
(prefill or decode) scale while engines step on other cores, and by another while its own core
is time-shared. On this 2-core box, served engines used 1.13–1.27× the CPU their simulated
steps held whenever two or more engines ran and 0.98× with one; 1.03–1.20× with the probe's
scales (`plan-validation-cpu-v4/validation*.md`).

Without `host_cores` (each engine on hardware of its own, a GPU) a step takes its time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from pdserve.deployments.engine.placement import cpu_list, omp_threads_bind
from pdserve.kv_transfer.ports import EngineSlot
from pdserve.simulation.events import EventLoop
from pdserve.simulation.profile_file import CoreContention, GraphOverhead

#: The largest share of an engine's core the graph's processes can take.
MAX_CPU_SHARE = 0.8
#: The cores group of engines that are not pinned.
UNPINNED = -1


@dataclass
class _Step:
    remaining_s: float  # of work, at a core's full speed
    done: Callable[[float], None]  # called with the step's elapsed time
    started_s: float
    since_s: float = 0.0  # when `remaining_s` was last brought up to date
    prefill: bool = False  # it computes prompt tokens (contention differs)
    share: float = 1.0  # of a core it has now (its work advances at `rate`, contention less)
    rate: float = 1.0
    version: int = 0  # its completion events older than this are stale


@dataclass
class _Cores:
    """Cores that a set of steps shares alike: one pinned core, or all of an unpinned host."""

    capacity: int
    steps: dict[int, _Step] = field(default_factory=dict)

    @property
    def busy(self) -> int:
        return min(self.capacity, len(self.steps))


class HostCPU:
    """The host's cores over simulated time (module docstring)."""

    def __init__(self, loop: EventLoop, overhead: GraphOverhead, pools: list[tuple[str, str]],
                 pinned: bool = True, contention: CoreContention | None = None) -> None:
        """`pools`: the app's pools as (model id, role), in the app's order
        (`AppConfig.pool_names`); `pinned`: the app's `cpu_binding` is `auto`; `contention`:
        the profile's measured slow-down of engines stepping at once (none if not given)."""
        self.loop, self.overhead = loop, overhead
        self.contention = contention or CoreContention()
        #: CPU seconds the engines' steps have used so far (what per-process accounting of a
        #: real run's engines measures; contention raises it, time-sharing does not).
        self.engine_cpu_s = 0.0
        #: Seconds the engines' steps were in progress without a whole core (time-shared with
        #: another engine or the graph): what a real run's engines' run-queue wait measures.
        self.engine_wait_s = 0.0
        self.cores = overhead.host_cores
        self.pools, self.pinned = pools, pinned
        self._groups: dict[int, _Cores] = {}
        self._ids = count()
        self._arrivals: deque[float] = deque()
        self._steps: deque[tuple[float, int]] = deque()  # (when, tokens) of recent steps
        self._token_count = 0  # tokens of the steps in `_steps`
        #: Engine steps that handed outputs to a replica, and their tokens, so far (counted with
        #: or without `host_cores`: what the calibration splits the graph's CPU over).
        self.steps_handed = 0
        self.tokens_handed = 0

    # -- where an engine runs ---------------------------------------------------------------
    def core_of(self, model_id: str, role: str, rank: int) -> int:
        """The cores group of `model_id`'s `role` engine of local rank `rank`: its pinned
        core, as the engine host binds it; `UNPINNED` otherwise."""
        if not self.cores or not self.pinned:
            return UNPINNED
        slot = EngineSlot(self.pools.index((model_id, role)), rank)
        bind = omp_threads_bind(slot, len(self.pools), list(range(self.cores)))
        return cpu_list(bind.split("|")[0])[0]

    # -- the graph's demand ---------------------------------------------------------------
    def request_arrived(self) -> None:
        if self.cores:
            self._arrivals.append(self.loop.now)

    def step_handed(self, n: int) -> None:
        """An engine step handed `n` tokens to its replica (one step, one message; none when
        `n` is 0: a prompt chunk that finished nothing)."""
        if not n:
            return
        self.steps_handed += 1
        self.tokens_handed += n
        if self.cores:
            self._steps.append((self.loop.now, n))
            self._token_count += n

    def demand(self) -> float:
        """Cores the graph's processes want now."""
        now, arrivals, steps = self.loop.now, self._arrivals, self._steps
        o = self.overhead
        window = o.cpu_window_s  # the demand spreads its work over this many seconds
        while arrivals and arrivals[0] < now - window:
            arrivals.popleft()
        while steps and steps[0][0] < now - window:
            self._token_count -= steps.popleft()[1]
        return o.background_cores + (o.cpu_per_request_s * len(arrivals)
                                     + o.cpu_per_step_s * len(steps)
                                     + o.cpu_per_token_s * self._token_count) / window

    def graph_shares(self) -> dict[int, float]:
        """The share of each busy cores group the graph's processes take now: their demand
        fills the cores no engine steps on (the OS wakes a thread on an idle core), all but
        `busy_core_share` of it (threads that run where an engine woke them, measured as the
        engines' run-queue wait at concurrency 1); what is left is taken from the busy cores
        alike (a thread woken where no core is idle stays where it woke: nothing steers it to
        the least loaded core), at most `MAX_CPU_SHARE` of each."""
        busy = {g: c for g, c in self._groups.items() if c.steps}
        if not busy:
            return {}
        cores = sum(c.busy for c in busy.values())
        demand = self.demand()
        idle = max(0, (self.cores or 0) - cores)
        left = demand - min(idle, (1.0 - self.overhead.busy_core_share) * demand)
        return {g: min(MAX_CPU_SHARE, max(0.0, left) / cores) for g in busy}

    def _short(self) -> bool:
        """The graph wants more than the cores no engine steps on."""
        stepping = sum(c.busy for c in self._groups.values())
        return self.demand() > max(0, (self.cores or 0) - stepping)

    def graph_slowdown(self) -> float:
        """How much longer the graph's own work takes than on an idle host: none while the
        cores no engine steps on could hold its demand; otherwise stretched as the busy engines
        are, by how many step per core and the share of a busy core it takes (1.0 without
        `host_cores`)."""
        shares = self.graph_shares()
        if not self.cores or not any(shares.values()) or not self._short():
            return 1.0
        stepping = sum(len(g.steps) for g in self._groups.values())
        graph_share = sum(shares.values()) / len(shares)
        return 1.0 / (min(1.0, self.cores / stepping) * (1.0 - graph_share))

    # -- steps ----------------------------------------------------------------------------
    def run_step(self, group: int, seconds: float, done: Callable[[float], None],
                 prefill: bool = False) -> None:
        """Run a step of `seconds` (at a core's full speed, alone on the host) on `group`'s
        cores; `done` is called with its elapsed time when it ends. `prefill`: the step
        computes prompt tokens."""
        if not self.cores:
            self.engine_cpu_s += seconds
            self.loop.after(seconds, done, seconds)
            return
        if (group == UNPINNED) == self.pinned:
            raise ValueError(f"cores group {group} on a host whose engines are "
                             f"{'pinned' if self.pinned else 'not pinned'}")
        capacity = 1 if group != UNPINNED else self.cores
        cores = self._groups.setdefault(group, _Cores(capacity))
        self._advance()
        now = self.loop.now
        cores.steps[next(self._ids)] = _Step(seconds, done, started_s=now, since_s=now,
                                             prefill=prefill)
        self._reshare()

    def _advance(self) -> None:
        """Bring every step's remaining work up to now at the rates it ran at."""
        now = self.loop.now
        for cores in self._groups.values():
            for step in cores.steps.values():
                step.remaining_s = max(0.0, step.remaining_s - (now - step.since_s) * step.rate)
                self.engine_cpu_s += (now - step.since_s) * step.share
                self.engine_wait_s += (now - step.since_s) * (1.0 - step.share)
                step.since_s = now

    def _reshare(self) -> None:
        """New rates for the steps (the sharing changed); a step whose rate changed, or a new
        one, has its end scheduled anew."""
        shares = self.graph_shares()
        now = self.loop.now
        busy = sum(c.busy for c in self._groups.values())
        for group, cores in self._groups.items():
            if not cores.steps:
                continue
            share = min(1.0, cores.capacity / len(cores.steps)) * (1.0 - shares[group])
            time_shared = len(cores.steps) > cores.capacity
            for key, step in cores.steps.items():
                step.share = share
                rate = share / self.contention.scale(step.prefill, busy - 1, time_shared)
                if step.version and abs(rate - step.rate) <= 1e-12 * rate:
                    continue  # its scheduled end still holds
                step.rate, step.version = rate, step.version + 1
                self.loop.at(now + step.remaining_s / rate, self._end, group, key, step.version)

    def _end(self, group: int, key: int, version: int) -> None:
        step = self._groups[group].steps.get(key)
        if step is None or step.version != version:
            return  # rescheduled since
        self._advance()
        del self._groups[group].steps[key]
        self._reshare()
        step.done(self.loop.now - step.started_s)


def app_pools(app: Any, model: Any) -> list[tuple[str, str]]:
    """The pools of `model`'s app as (model id, role), in the app's order
    (`AppConfig.pool_names`), with `model`'s own as simulated (a planner's candidate may run it
    in another mode); `model`'s alone without an app."""
    own = [(model.model_id, role) for role in model.pools()]
    if app is None:
        return own
    pools: list[tuple[str, str]] = []
    for m in app.models:
        pools += own if m.model_id == model.model_id else [(m.model_id, r) for r in m.pools()]
    return pools if own[0] in pools else pools + own
