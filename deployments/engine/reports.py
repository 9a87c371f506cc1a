"""What an engine replica tells the rest of the graph: its load and KV-event endpoints to the
routers (`RoutingStats`), its latency and load signals with its model's targets to the
autoscaling policy (`ReplicaReport`). The engine's scheduler numbers come from a vLLM stat
logger, so nothing polls the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase

from pdserve.deployments.autoscaling.report import ReplicaReport, ReplicaSignals
from pdserve.deployments.autoscaling.signals import ReplicaSLOSignals
from pdserve.deployments.config.slo import SLOTargets
from pdserve.routing.types import RoutingStats


class LoadReport:
    """The engine's latest scheduler numbers, captured by a vLLM stat logger (no polling)."""

    def __init__(self) -> None:
        self.kv_cache_usage = 0.0
        self.num_running = 0
        self.num_waiting = 0
        #: Called once per engine step that reports stats (the stall watchdog's heartbeat).
        self.on_step: Callable[[], None] = lambda: None

    def logger_factory(self) -> type[StatLoggerBase]:
        report = self

        class _Recorder(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, *_: Any,
                       **__: Any) -> None:
                if scheduler_stats is not None:
                    report.on_step()
                    report.kv_cache_usage = float(scheduler_stats.kv_cache_usage)
                    report.num_running = int(scheduler_stats.num_running_reqs)
                    report.num_waiting = int(scheduler_stats.num_waiting_reqs)

            def log_engine_initialized(self) -> None:
                pass

        return _Recorder


def engine_routing_stats(engine: AsyncLLM, replica_id: str) -> RoutingStats:
    """What routers need once: where this engine publishes KV events, its KV geometry."""
    cache = engine.vllm_config.cache_config
    stats = RoutingStats(replica=replica_id, block_size=cache.block_size,
                         num_gpu_blocks=cache.num_gpu_blocks or 0)
    sources = engine.get_kv_event_sources()
    if sources:
        events = sources[min(sources)]
        stats = replace(stats, kv_events_endpoint=events.endpoint,
                        kv_events_replay_endpoint=events.replay_endpoint)
    return stats


def with_load(stats: RoutingStats, load: LoadReport) -> RoutingStats:
    return replace(stats, kv_cache_usage=load.kv_cache_usage, num_running=load.num_running,
                   num_waiting=load.num_waiting)


def replica_report(signals: ReplicaSLOSignals, load: LoadReport, slo: SLOTargets | None,
                   replica_budget: int | None, *, capacity_rps: float | None = None,
                   node: int | None = None, engine_slots: int | None = None,
                   planner_interval_s: float | None = None,
                   oversubscribe_cores: bool = False, fixed_engines: int = 0) -> ReplicaReport:
    """Latencies at the model's percentile over the recent window, the peak of queued prefill
    tokens since the last report, the engine's load, the load offered to the replica (and what
    one engine carries of it, with a planner floor), where it runs, and the live targets and
    budget."""
    q = slo.percentile if slo else SLOTargets().percentile
    return ReplicaReport(
        ReplicaSignals(
            warm=signals.warm, ttft_ms=signals.ttft.percentile(q),
            itl_ms=signals.itl.percentile(q), kv_cache_usage=load.kv_cache_usage,
            queued_prefill_tokens=float(signals.take_peak_queued_prefill_tokens()),
            waiting=float(load.num_waiting), running=float(load.num_running),
            arrivals_per_s=signals.arrival_rate(), capacity_rps=capacity_rps, node=node,
            engine_slots=engine_slots),
        slo, replica_budget, planner_interval_s, oversubscribe_cores, fixed_engines)
