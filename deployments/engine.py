"""The engine host every pool uses: one vLLM `AsyncLLM` inside one Ray Serve replica.

It sets the replica's engine environment (NIXL side channel, CPU binding) before the engine
starts, exports vLLM's own `vllm:*` metrics through Ray, and streams `RequestOutput`s. A decode
that is still pulling KV when its caller goes away is aborted only once the pull finished:
aborting a request mid-transfer can crash vLLM's engine core.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import psutil
import ray
from pdserve.deployments.config import AppConfig, ModelConfig, SLOTargets
from pdserve.deployments.messages import DecodeRequest
from pdserve.deployments.slo_signals import ReplicaSLOSignals, RequestSignals
from pdserve.kv_transfer.nixl import (
    NIXL_STATE_EXTENSION,
    EngineSlot,
    Role,
    apply_engine_env,
    kv_transfer_config,
    uses_nixl,
)
from pdserve.kv_transfer.params import KV_PARAMS_KEY, without_transfer_params
from prometheus_client import REGISTRY, generate_latest
from ray import serve
from vllm.config.kv_events import KVEventsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import PrometheusStatLogger, StatLoggerBase
from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

from pdserve.tiny_model import resolve_model

logger = logging.getLogger(__name__)

_END = object()


def _coalesce(
    output: RequestOutput, queue: asyncio.Queue, aggregate: bool
) -> tuple[RequestOutput, Any]:
    """Merge outputs that are already waiting into one message, as vLLM's own output
    collector does for a slow reader; return it and the first non-output item, if any.

    Under load this sends one Ray stream message per burst instead of one per engine step.
    """
    while not queue.empty():
        item = queue.get_nowait()
        if item is _END or isinstance(item, BaseException):
            return output, item
        if aggregate:
            output.add(item, aggregate=True)
        else:
            output = item  # cumulative outputs: the newest one holds everything
    return output, None


class LoadReport:
    """The engine's latest scheduler numbers, captured by a vLLM stat logger (no polling)."""

    def __init__(self) -> None:
        self.kv_cache_usage = 0.0
        self.num_running = 0
        self.num_waiting = 0

    def logger_factory(self) -> type[StatLoggerBase]:
        report = self

        class _Recorder(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, *_: Any,
                       **__: Any) -> None:
                if scheduler_stats is not None:
                    report.kv_cache_usage = float(scheduler_stats.kv_cache_usage)
                    report.num_running = int(scheduler_stats.num_running_reqs)
                    report.num_waiting = int(scheduler_stats.num_waiting_reqs)

            def log_engine_initialized(self) -> None:
                pass

        return _Recorder


def kv_events_config(enabled: bool) -> KVEventsConfig | None:
    """Publish KV events on OS-chosen ports of this node's IP (no per-host port planning);
    the bound endpoints are read back from the engine and reported to routers."""
    if not enabled:
        return None
    return KVEventsConfig(enable_kv_cache_events=True, publisher="zmq",
                          endpoint="tcp://*:0", replay_endpoint="tcp://*:0")


class EngineHost:
    """Base class of the prefill, decode and colocated deployments."""

    role: Role

    def __init__(self, app_config: dict[str, Any], model_id: str, pool_index: int) -> None:
        config = AppConfig.model_validate(app_config)
        self.model: ModelConfig = next(m for m in config.models if m.model_id == model_id)
        self.fault_injection = config.testing.fault_injection
        context = serve.get_replica_context()
        slot = EngineSlot(pool_index=pool_index, local_rank=context.rank.local_rank)
        self.replica_id = context.replica_id.unique_id
        self.engine_id = f"{model_id}-{self.role}-{self.replica_id}"
        env = apply_engine_env(
            slot=slot,
            num_pools=len(config.pool_slots()),
            base_port=self.model.kv_transfer.side_channel_base_port,
            host=ray.util.get_node_ip_address(),  # reachable from decoders on other nodes
            bind_cpus=config.cpu_binding == "auto",
        )
        logger.info("engine %s starting with %s", self.engine_id, env)
        self.load = LoadReport()
        self.engine = AsyncLLM.from_engine_args(
            self._engine_args(),
            stat_loggers=[RayPrometheusStatLogger, PrometheusStatLogger,
                          self.load.logger_factory()],
        )
        self._pending_aborts: set[asyncio.Task] = set()
        self._routing_stats = self._static_routing_stats()
        self.slo: SLOTargets | None = self.model.slo
        self.replica_budget: int | None = config.replica_budget
        self.slo_signals = ReplicaSLOSignals()
        self._configure_signals()

    def _configure_signals(self) -> None:
        if self.slo is not None:
            self.slo_signals.configure(self.slo.window_s, self.slo.warmup_requests)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve `user_config`: the model's SLO targets and the replica budget.

        Ray applies a `user_config` change without restarting the replica, so targets are
        retuned live (`deployments: [{name: <model>-<role>, user_config: {...}}]` in the YAML).
        """
        slo = user_config.get("slo")
        self.slo = SLOTargets.model_validate(slo) if slo is not None else None
        self.replica_budget = user_config.get("replica_budget")
        self._configure_signals()
        logger.info("engine %s: SLO targets %s, replica budget %s", self.engine_id,
                    self.slo, self.replica_budget)

    def track(self, request: Any, computes_prompt: bool = True) -> RequestSignals:
        """Start timing a request on this replica (TTFT, ITL, queued prefill tokens)."""
        tokens = request.routing.prompt_tokens if computes_prompt else 0
        return self.slo_signals.start(tokens)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Ray Serve pushes these to the autoscaling policy every `metrics_interval_s`.

        Latencies are the configured percentile over the recent window (-1: no sample); the
        model's targets travel with them so the policy always uses the live ones.
        """
        signals = self.slo_signals
        q = self.slo.percentile if self.slo else 90.0
        ttft, itl = signals.ttft.percentile(q), signals.itl.percentile(q)
        stats: dict[str, float] = {
            "warm": float(signals.warm),
            "ttft_ms": -1.0 if ttft is None else ttft,
            "itl_ms": -1.0 if itl is None else itl,
            "queued_prefill_tokens": float(signals.take_peak_queued_prefill_tokens()),
            "kv_cache_usage": self.load.kv_cache_usage,
            "num_running": float(self.load.num_running),
            "num_waiting": float(self.load.num_waiting),
            "replica_budget": float(self.replica_budget or -1),
        }
        if self.slo is not None:
            for name in ("ttft_ms", "itl_ms", "max_queued_prefill_tokens", "max_kv_cache_usage",
                         "scale_down_below"):
                stats[f"slo_{name}"] = float(getattr(self.slo, name))
            for name in ("min_prefill_decode_ratio", "max_prefill_decode_ratio"):
                value = getattr(self.slo, name)
                stats[f"slo_{name}"] = -1.0 if value is None else float(value)
        return stats

    def _engine_args(self) -> AsyncEngineArgs:
        settings = self.model.kv_transfer
        transfer = kv_transfer_config(self.role, self.engine_id, settings.kv_buffer_device,
                                      settings.progress_thread_delay_us)
        kwargs = dict(self.model.engine_kwargs)
        if uses_nixl(self.role):  # lets `nixl_state` ask the worker what its agent got
            kwargs.setdefault("worker_extension_cls", NIXL_STATE_EXTENSION)
        if self.role == "embed":  # a pooling model: no KV to transfer or to route by
            kwargs.setdefault("runner", "pooling")
        events = self.model.routing.kv_events and self.role != "embed"
        return AsyncEngineArgs(
            model=resolve_model(self.model.model),  # built on this node if it is pdserve://
            served_model_name=self.model.model_id,
            kv_transfer_config=transfer,
            kv_events_config=kv_events_config(events),
            **kwargs,
        )

    def _static_routing_stats(self) -> dict[str, Any]:
        """What routers need once: where this engine publishes KV events, its block size."""
        stats: dict[str, Any] = {
            "replica": self.replica_id,
            "block_size": self.engine.vllm_config.cache_config.block_size,
            "num_gpu_blocks": self.engine.vllm_config.cache_config.num_gpu_blocks or 0,
        }
        sources = self.engine.get_kv_event_sources()
        if sources:
            events = sources[min(sources)]
            stats["kv_events_endpoint"] = events.endpoint
            stats["kv_events_replay_endpoint"] = events.replay_endpoint
        return stats

    def record_routing_stats(self) -> dict[str, Any]:
        """Ray Serve pulls this every `request_routing_stats_period_s` for the routers."""
        return {**self._routing_stats, "kv_cache_usage": self.load.kv_cache_usage,
                "num_running": self.load.num_running, "num_waiting": self.load.num_waiting}

    async def check_health(self) -> None:
        """Ray Serve calls this periodically; raising makes Serve replace the replica."""
        await self.engine.check_health()

    async def health(self, replica: str | None = None) -> bool:
        await self.engine.check_health()
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

    async def generate(self, request: DecodeRequest) -> AsyncIterator[RequestOutput]:
        """Generate, pulling the prompt's KV first when the request carries transfer params."""
        params = request.sampling_params.clone()
        pulling = request.kv_transfer_params is not None
        extra = without_transfer_params(params.extra_args)
        if pulling:
            extra[KV_PARAMS_KEY] = request.kv_transfer_params
        params.extra_args = extra or None
        queue: asyncio.Queue[Any] = asyncio.Queue()
        first_output = asyncio.Event()
        aggregate = params.output_kind == RequestOutputKind.DELTA
        signals = self.track(request, computes_prompt=not pulling)
        pump = asyncio.create_task(
            self._pump(request, params, queue, first_output, signals, aggregate),
            name=f"pump-{request.request_id}",
        )
        finished = False
        pending: Any = None
        try:
            while True:
                item = pending if pending is not None else await queue.get()
                if item is _END:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    raise item
                item, pending = _coalesce(item, queue, aggregate)
                yield item
        finally:
            signals.finish()
            if not finished:
                self._stop_pump(request.request_id, pump, first_output, pulling)

    async def _pump(
        self, request: DecodeRequest, params: Any, queue: asyncio.Queue, first: asyncio.Event,
        signals: RequestSignals, delta: bool,
    ) -> None:
        seen = 0
        try:
            async for output in self.engine.generate(
                request.engine_input, params, request.request_id
            ):
                first.set()
                tokens = sum(len(o.token_ids) for o in output.outputs)
                signals.on_output(tokens if delta else tokens - seen)
                seen = tokens
                queue.put_nowait(output)
            queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surfaced to the consumer, which re-raises it
            queue.put_nowait(exc)

    def _stop_pump(
        self, request_id: str, pump: asyncio.Task, first: asyncio.Event, pulling: bool
    ) -> None:
        """Abort a request whose caller left; if its KV pull may be in flight, wait for it."""
        if not pulling or first.is_set():
            pump.cancel()  # vLLM aborts the request when its generator is cancelled
            return
        logger.info("request %s: caller left during KV pull; abort deferred", request_id)

        async def abort_after_pull() -> None:
            waiter = asyncio.ensure_future(first.wait())
            await asyncio.wait({waiter, pump}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            pump.cancel()

        task = asyncio.create_task(abort_after_pull())
        self._pending_aborts.add(task)
        task.add_done_callback(self._pending_aborts.discard)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
