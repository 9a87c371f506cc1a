"""The engine host every pool uses: one vLLM `AsyncLLM` inside one Ray Serve replica.

It places the engine on its host (`placement.py`) before the engine starts, exports vLLM's own
`vllm:*` metrics through Ray, reports to the routers and the autoscaler (`reports.py`), offers
its pools an output stream (`streaming.py`), and answers admin calls a test or an operator may
pin to one replica (`replica=<unique id>`; see `routing/router.py`). What a pool serves (prefill,
generate, embed) is its own deployment's method, in `prefill/`, `decode/`, `pipelines/`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import psutil
import ray
from prometheus_client import REGISTRY, generate_latest
from ray import serve
from ray.serve.metrics import Counter, Gauge
from vllm.lora.request import LoRARequest
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import PrometheusStatLogger
from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

from pdserve import tracing
from pdserve.deployments.autoscaling.report import node_key
from pdserve.deployments.autoscaling.signals import ReplicaSLOSignals, RequestSignals
from pdserve.deployments.config.binding import EngineBinding
from pdserve.deployments.config.pools import Role
from pdserve.deployments.config.slo import SLOTargets
from pdserve.deployments.engine.actors import actor_alive
from pdserve.deployments.engine.adapter_registry import SYNC_PERIOD_S, adapter_registry
from pdserve.deployments.engine.adapters import static_adapters
from pdserve.deployments.engine.args import engine_args, worker_processes
from pdserve.deployments.engine.callers import Caller, CallerGone, watch_callers
from pdserve.deployments.engine.capacity import capacity_of
from pdserve.deployments.engine.placement import apply_engine_env, physical_engine_slots
from pdserve.deployments.engine.reaper import guard_engine_processes
from pdserve.deployments.engine.reports import (
    LoadReport,
    engine_routing_stats,
    replica_report,
    with_load,
)
from pdserve.deployments.engine.streaming import OutputStream
from pdserve.deployments.engine.watchdog import StallWatchdog
from pdserve.kv_transfer.connector import NIXL_STATE_EXTENSION
from pdserve.kv_transfer.params import block_bytes
from pdserve.kv_transfer.ports import EngineSlot
from pdserve.routing.types import RoutingInfo

logger = logging.getLogger(__name__)

#: How often an engine replica re-sets `pdserve_engine_info` (under Ray's gauge lifetime).
INFO_PERIOD_S = 5.0
#: Every how many adapter-sync periods an engine reads which adapters it holds, changed or not.
HELD_REFRESH_PERIODS = 5


def engine_timings(output: Any) -> dict[str, float]:
    """vLLM's own timestamps of a request (engine-core clock; `RequestOutput.metrics`) as span
    attributes: seconds queued before first scheduled, from then to the first token (the
    prefill, or the KV pull and first step of a decode that pulls), from it to the last."""
    stats = getattr(output, "metrics", None)
    if stats is None or not getattr(stats, "scheduled_ts", 0):
        return {}
    timings = {"pdserve.engine.queued_s": max(0.0, stats.scheduled_ts - stats.queued_ts)}
    if stats.first_token_ts:
        timings["pdserve.engine.to_first_token_s"] = stats.first_token_ts - stats.scheduled_ts
        if stats.last_token_ts > stats.first_token_ts:
            timings["pdserve.engine.decode_s"] = stats.last_token_ts - stats.first_token_ts
    return timings


def pool_counter(name: str, description: str, tags: dict[str, str],
                 *extra_keys: str) -> Counter:
    """A Ray counter tagged with its pool (`tags`) by default; `extra_keys` are set per call.
    (Ray's `set_default_tags` adds its own keys to the dict it is given: it gets a copy.)"""
    counter = Counter(name, description, tag_keys=(*tags, *extra_keys))
    counter.set_default_tags(dict(tags))
    return counter


class EngineHost:
    """Base class of the prefill, decode, colocated and embedding deployments."""

    role: Role

    def __init__(self, binding: EngineBinding) -> None:
        if binding.role != self.role:
            raise ValueError(f"{type(self).__name__} serves `{self.role}` pools, "
                             f"bound to a `{binding.role}` pool")
        self.model = binding.model
        self.fault_injection = binding.fault_injection
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.engine_id = f"{self.model.model_id}-{self.role}-{self.replica_id}"
        env = apply_engine_env(
            slot=EngineSlot(pool_index=binding.pool_index, local_rank=context.rank.local_rank),
            num_pools=binding.num_pools,
            base_port=self.model.kv_transfer.side_channel_base_port,
            host=ray.util.get_node_ip_address(),  # reachable from decoders on other nodes
            bind_cpus=binding.cpu_binding == "auto",
            workers=worker_processes(self.model.engine_kwargs),
        )
        logger.info("engine %s starting with %s", self.engine_id, env)
        self.load = LoadReport()
        self.draining = False  # set by a drain (generating pools): routers leave it out
        self.engine = AsyncLLM.from_engine_args(
            engine_args(self.model, self.role, self.engine_id),
            stat_loggers=[RayPrometheusStatLogger, PrometheusStatLogger,
                          self.load.logger_factory()],
        )
        self.stream = OutputStream(self.engine, set())
        self.kv_block_bytes = block_bytes(self.engine.vllm_config)
        # vLLM's own request spans (`otlp_traces_endpoint` in engine_kwargs) join pdserve's
        self._engine_traces = (
            self.engine.vllm_config.observability_config.otlp_traces_endpoint is not None)
        self._reaper = guard_engine_processes()  # the engine dies with this replica, however
        self._routing_stats = engine_routing_stats(self.engine, self.replica_id)
        self.slo: SLOTargets | None = self.model.slo
        self.replica_budget: int | None = None
        self.oversubscribe_cores = False
        self.fixed_engines = 0
        self.slo_signals = ReplicaSLOSignals()
        self.capacity = capacity_of(binding, self.engine.vllm_config.scheduler_config)
        self.node = node_key(ray.get_runtime_context().get_node_id())
        self.engine_slots = physical_engine_slots(
            binding.cpu_binding == "auto", worker_processes(self.model.engine_kwargs),
            self.engine.vllm_config.device_config.device_type == "cpu")
        self._configure_signals()
        self.watchdog = StallWatchdog(self.model.health.stall_timeout_s)
        self.load.on_step = self.watchdog.stepped
        self._watching: asyncio.Task | None = None
        self._watching_callers: asyncio.Task | None = None
        self.pool_tags = {"model": self.model.model_id, "pool": self.role}
        self._stalls = pool_counter(
            "pdserve_engine_stalls_total",
            "Engines found making no progress with requests in flight.", self.pool_tags)
        # vLLM's own series (KV transfer, queue time, cache usage) carry its `ReplicaId`; this
        # one joins them to their model and pool (`* on (ReplicaId) group_left (model, pool)`)
        self._info = Gauge("pdserve_engine_info", "1 per engine replica: its model and pool.",
                           tag_keys=("model", "pool", "ReplicaId"))
        self._announcing: asyncio.Task | None = None
        # the model's LoRA adapters, loaded before requests name them (vLLM would load one on
        # first use, from the path the request names: a bad path shows at start-up instead),
        # and those loaded at run time through the app's registry
        self.adapters = static_adapters(self.model)
        self.runtime_adapters: dict[str, LoRARequest] = {}
        self.held_adapters: tuple[str, ...] = ()  # loaded now, as the routers learn it
        self._lora = self.model.serves_lora()
        self._keeping_adapters: asyncio.Task | None = None
        self._adapter_error: BaseException | None = None
        self._registry: Any = None
        self._registry_seen: tuple[str, int] | None = None
        self._syncing_adapters = asyncio.Lock()  # the loop's syncs and the ingress's, one by one
        self._orphans = pool_counter(
            "pdserve_orphaned_requests_aborted_total",
            "Requests aborted because the ingress replica streaming them died.", self.pool_tags)
        self._watch()

    # -- what the rest of the graph reads ----------------------------------------------------
    def _configure_signals(self) -> None:
        if self.slo is not None:
            self.slo_signals.configure(self.slo.window_s, self.slo.warmup_requests)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve `user_config`: the model's SLO targets, the replica budget and whether
        the policy may put more CPU engines on a node than it has cores.

        Ray applies a `user_config` change without restarting the replica, so targets are
        retuned live (`deployments: [{name: <model>-<role>, user_config: {...}}]` in the YAML).
        """
        slo = user_config.get("slo")
        self.slo = SLOTargets.model_validate(slo) if slo is not None else None
        self.replica_budget = user_config.get("replica_budget")
        self.oversubscribe_cores = bool(user_config.get("oversubscribe_cores", False))
        self.fixed_engines = int(user_config.get("fixed_engines", 0))
        self._configure_signals()
        logger.info("engine %s: SLO targets %s, replica budget %s", self.engine_id,
                    self.slo, self.replica_budget)

    def span(self, name: str, parent: tracing.Span | None = None,
             **attributes: Any) -> tracing.Span:
        """A span of this engine's work under `parent` (default: the calling request's span,
        Ray's replica span)."""
        return tracing.start(name, parent, **{"pdserve.replica": self.replica_id,
                                      "pdserve.pool": f"{self.model.model_id}/{self.role}",
                                      **attributes})

    def trace_headers(self, span: tracing.Span) -> dict[str, str] | None:
        """W3C headers that make vLLM's `llm_request` span a child of `span`, when this
        engine traces (vLLM drops them, with a warning, when it does not)."""
        return tracing.carrier(span) if self._engine_traces else None

    def track(self, routing: RoutingInfo, computes_prompt: bool = True) -> RequestSignals:
        """Start timing a request on this replica (TTFT, ITL, queued prefill tokens, the load
        offered)."""
        return self.slo_signals.start(routing.prompt_tokens, computes_prompt)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Ray Serve pushes these to the autoscaling policy every `metrics_interval_s`."""
        capacity = (await self.capacity.current(self.slo_signals, self.slo)
                    if self.capacity is not None and self.slo is not None else None)
        return replica_report(
            self.slo_signals, self.load, self.slo, self.replica_budget, capacity_rps=capacity,
            node=self.node, engine_slots=self.engine_slots,
            planner_interval_s=self.model.planner.interval_s if self.model.planner else None,
            oversubscribe_cores=self.oversubscribe_cores,
            fixed_engines=self.fixed_engines).encode()

    def record_routing_stats(self) -> dict[str, Any]:
        """Ray Serve pulls this every `request_routing_stats_period_s` for the routers."""
        return replace(with_load(self._routing_stats, self.load),
                       draining=self.draining, adapters=self.held_adapters).encode()

    # -- health and administration ----------------------------------------------------------
    def _watch(self) -> None:
        """Start the stall watchdog and the callers' check (once there is an event loop to run
        them on)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # the first health check starts them
        if self._announcing is None:
            self._announcing = loop.create_task(self._announce())
        if self._keeping_adapters is None and self._lora:
            self._keeping_adapters = loop.create_task(self._keep_adapters())
        if self._watching_callers is None:
            self._watching_callers = loop.create_task(watch_callers(
                self.stream.callers, self._caller_gone, self.model.health.caller_check_period_s,
                actor_alive))
        if self._watching is not None or not self.engine.log_stats:
            return  # no stats, no heartbeat (vLLM turns them on for pdserve's stat loggers)
        busy = self.engine.output_processor.get_num_unfinished_requests
        self._watching = loop.create_task(self.watchdog.run(lambda: busy() > 0,
                                                            self._stalled))

    async def _announce(self) -> None:
        """Keep `pdserve_engine_info` exported: Ray drops a gauge not set again within two
        metrics-report intervals (20 s by default)."""
        tags = {**self.pool_tags, "ReplicaId": self.replica_id}
        while True:
            self._info.set(1, tags=tags)
            await asyncio.sleep(INFO_PERIOD_S)

    async def _keep_adapters(self) -> None:
        """Load the YAML's adapters (a failure fails the health check), then follow the app's
        run-time adapters."""
        try:
            for adapter in self.adapters.values():
                await self.engine.add_lora(adapter)
        except Exception as exc:
            logger.error("engine %s: LoRA adapters %s not loaded: %s", self.engine_id,
                         sorted(self.adapters), exc)
            self._adapter_error = exc
            return
        logger.info("engine %s loaded LoRA adapters %s", self.engine_id, sorted(self.adapters))
        self.held_adapters = tuple(await self.loaded_adapters())
        rounds = 0
        while True:
            rounds += 1
            try:
                # vLLM loads an adapter beyond `max_cpu_loras` on first use, evicting another:
                # what it holds is read again every few periods even when nothing changed
                async with self._syncing_adapters:
                    await self._sync_adapters(
                        changed_only=rounds % HELD_REFRESH_PERIODS != 0, bounded=True)
            except Exception as exc:  # the registry restarts; try again next period
                logger.warning("engine %s: run-time LoRA adapters not synced (%s)",
                               self.engine_id, exc)
                self._registry = self._registry_seen = None
            await asyncio.sleep(SYNC_PERIOD_S)

    async def sync_adapters(self, replica: str | None = None) -> dict[str, Any]:
        """Load every run-time adapter the app's registry lists for this model (how the ingress
        checks a load), unload those it no longer lists: the adapters held now, and those that
        failed to load (by name, with the error's kind; the error itself is logged here)."""
        if replica is not None and replica != self.replica_id:
            raise RuntimeError(f"sync_adapters for replica {replica} reached {self.replica_id}")
        async with self._syncing_adapters:
            return await self._sync_adapters(changed_only=False, bounded=False)

    async def _sync_adapters(self, changed_only: bool, bounded: bool) -> dict[str, Any]:
        """`changed_only`: nothing to do while the registry is as it was at the last sync;
        `bounded`: load nothing beyond vLLM's `max_cpu_loras` (each load would evict another;
        vLLM loads one on first use). The background loop's syncs are bounded."""
        if self._registry is None:  # (a GCS lookup: off the event loop)
            app = serve.get_replica_context().app_name
            self._registry = await asyncio.to_thread(adapter_registry, app)
        snapshot = await self._registry.snapshot.remote()
        seen = (snapshot.epoch, snapshot.version)
        if changed_only and seen == self._registry_seen:
            return {}
        self._registry_seen = seen
        wanted = await asyncio.to_thread(snapshot.of, self.model.model_id)
        failed: dict[str, str] = {}
        held = set(await self.engine.list_loras())  # (a list, whatever vLLM's hint says)
        room = self.engine.vllm_config.lora_config.max_cpu_loras  # type: ignore[union-attr]
        for name, adapter in wanted.items():
            if adapter.lora_int_id in held or (bounded and len(held) >= room):
                continue
            try:
                await self.engine.add_lora(adapter)
                held.add(adapter.lora_int_id)
            except Exception as exc:
                logger.error("engine %s: LoRA adapter %s not loaded: %s", self.engine_id, name,
                             exc)
                failed[name] = type(exc).__name__
        # whatever the engine holds that nobody serves now: unloaded adapters, also those vLLM
        # loaded again for requests that were still queued when they were unloaded
        keep = {a.lora_int_id for a in [*self.adapters.values(), *wanted.values()]}
        for lora_id in held - keep:
            await self.engine.remove_lora(lora_id)
        self.runtime_adapters = {n: a for n, a in wanted.items() if n not in failed}
        loaded = await self.loaded_adapters()
        self.held_adapters = tuple(loaded)
        return {"loaded": loaded, "failed": failed}

    def _stalled(self, stalled_s: float) -> None:
        logger.error("engine %s made no step for %.0f s with requests in flight: stalled; "
                     "its health check fails from now on", self.engine_id, stalled_s)
        self._stalls.inc()
        self.on_stalled(stalled_s)

    def _caller_gone(self, caller: Caller) -> None:
        aborted = self.stream.fail_caller(
            caller, lambda: CallerGone(f"caller {caller.name} is gone"))
        logger.warning("engine %s: caller %s is gone; aborting its %d requests", self.engine_id,
                       caller.name, aborted)
        self._orphans.inc(aborted)

    def on_stalled(self, stalled_s: float) -> None:
        """What a pool does with its requests when its engine stalls (nothing by default: its
        callers time out, e.g. prefill calls at `prefill_timeout_s`)."""

    async def check_health(self) -> None:
        """Ray Serve calls this periodically; raising makes Serve replace the replica."""
        self._watch()
        if self._adapter_error is not None:
            raise RuntimeError(f"engine {self.engine_id} could not load its LoRA adapters: "
                               f"{self._adapter_error}")
        if self.watchdog.stalled:
            raise RuntimeError(f"engine {self.engine_id} stalled: no step for "
                               f"{self.watchdog.stalled_for:.0f} s with requests in flight")
        await self.engine.check_health()

    async def health(self, replica: str | None = None) -> bool:
        await self.check_health()
        return True

    async def vllm_metrics(self, replica: str | None = None) -> str:
        """vLLM's own Prometheus metrics of this replica's engine, as exposition text."""
        await self.engine.do_log_stats()
        return generate_latest(REGISTRY).decode()

    async def nixl_state(self, replica: str | None = None) -> list[dict[str, Any]]:
        """Per engine worker: its KV connector class, the progress-thread delay its NIXL agent
        was created with, and the cores of its compute and agent threads (empty list for
        pools without NIXL, or when `engine_kwargs` name another `worker_extension_cls`)."""
        if self.engine.vllm_config.parallel_config.worker_extension_cls != NIXL_STATE_EXTENSION:
            return []
        return await self.engine.collective_rpc("pdserve_nixl_state")

    async def loaded_adapters(self, replica: str | None = None) -> list[str]:
        """Names of the LoRA adapters this engine holds loaded (`id:<n>` for one it holds
        that this replica does not serve, which should not last)."""
        ids = set(await self.engine.list_loras())
        names = {a.lora_int_id: a.lora_name
                 for a in [*self.adapters.values(), *self.runtime_adapters.values()]}
        return sorted(names.get(i, f"id:{i}") for i in ids)

    def engine_processes(self, replica: str | None = None) -> list[int]:
        """This replica's process and the engine processes it started (core, workers)."""
        me = psutil.Process()
        return [me.pid, *(p.pid for p in me.children(recursive=True))]

    async def drained(self, replica: str | None = None) -> dict[str, Any]:
        """Whether this engine holds no request and no KV block (used after cancellations).

        vLLM's prefix-cache reset succeeds only when every KV block is free, so it doubles as
        an exact "no KV held" check; it also drops cached prefixes, so call it only to verify.
        """
        core_busy = await self.engine.engine_core.call_utility_async("has_work")
        return {
            "unfinished_requests": self.engine.output_processor.get_num_unfinished_requests(),
            "engine_core_has_work": bool(core_busy),
            "all_kv_blocks_free": bool(await self.engine.reset_prefix_cache()),
        }

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
