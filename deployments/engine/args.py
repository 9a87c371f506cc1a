"""The vLLM engine arguments of one pool replica: the model's own `engine_kwargs`, plus what
pdserve sets per pool (KV connector by role, KV events, pooling runner)."""

from __future__ import annotations

from vllm.config.kv_events import KVEventsConfig
from vllm.engine.arg_utils import AsyncEngineArgs

from pdserve.deployments.config.models import ModelConfig
from pdserve.deployments.config.pools import Role
from pdserve.kv_transfer.connector import NIXL_STATE_EXTENSION, KVRole, kv_transfer_config
from pdserve.models import resolve_model

#: The KV connector's role for pools that move KV; other pools have no connector.
KV_ROLES: dict[Role, KVRole] = {"prefill": "kv_producer", "decode": "kv_consumer"}


def kv_events_config(enabled: bool) -> KVEventsConfig | None:
    """Publish KV events on OS-chosen ports of this node's IP (no per-host port planning);
    the bound endpoints are read back from the engine and reported to routers."""
    if not enabled:
        return None
    return KVEventsConfig(enable_kv_cache_events=True, publisher="zmq",
                          endpoint="tcp://*:0", replay_endpoint="tcp://*:0")


def worker_processes(engine_kwargs: dict) -> int:
    """How many worker processes vLLM gives one engine of these arguments: none when the model
    can run in the engine-core process (one worker, no data parallelism, no executor backend
    named: `placement.single_process_env`), else one per worker (tensor x pipeline x prefill
    context parallel)."""
    workers = 1
    for size in ("tensor_parallel_size", "pipeline_parallel_size",
                 "prefill_context_parallel_size"):
        workers *= int(engine_kwargs.get(size) or 1)
    in_core = (workers == 1 and int(engine_kwargs.get("data_parallel_size") or 1) == 1
               and engine_kwargs.get("distributed_executor_backend") in (None, "uni"))
    return 0 if in_core else workers


def engine_args(model: ModelConfig, role: Role, engine_id: str) -> AsyncEngineArgs:
    kwargs = dict(model.engine_kwargs)
    transfer = None
    kv_role = KV_ROLES.get(role)
    if kv_role is not None:
        settings = model.kv_transfer
        transfer = kv_transfer_config(kv_role, engine_id, settings.kv_buffer_device,
                                      settings.progress_thread_delay_us, settings.kv_lease_s)
        kwargs.setdefault("worker_extension_cls", NIXL_STATE_EXTENSION)  # for `nixl_state`
    if role == "embed":  # a pooling model: no KV to transfer or to route by
        kwargs.setdefault("runner", "pooling")
    return AsyncEngineArgs(
        model=resolve_model(model.model),  # built on this node if it is pdserve://
        served_model_name=model.model_id,
        kv_transfer_config=transfer,
        kv_events_config=kv_events_config(model.routing.kv_events and role != "embed"),
        **kwargs,
    )
