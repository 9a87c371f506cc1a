"""Per-engine host settings: NIXL ports unique on a host, CPU cores spread over engines."""

from __future__ import annotations

import os
import socket

import pytest
from vllm.config.kv_transfer import KVTransferConfig

from pdserve.deployments.config.models import ModelConfig
from pdserve.deployments.engine.args import engine_args, worker_processes
from pdserve.deployments.engine.placement import (
    SINGLE_PROCESS_SWITCH,
    apply_engine_env,
    cpu_list,
    omp_threads_bind,
    single_process_env,
)
from pdserve.kv_transfer.connector import NIXL_STATE_EXTENSION, QUIET_CONNECTOR_MODULE
from pdserve.kv_transfer.ports import (
    PORTS_PER_POOL,
    EngineSlot,
    first_free_port,
    side_channel_port,
)


@pytest.fixture(autouse=True)
def _restore_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`apply_engine_env` writes the engine's variables into `os.environ` (in an engine replica
    that is the point); here they must not outlive the test: a later test's Ray cluster,
    started from this process, would inherit them (`VLLM_HOST_IP=127.0.0.1` among them)."""
    monkeypatch.setattr("os.environ", dict(os.environ))


def test_side_channel_ports_are_unique_across_pools_and_ranks() -> None:
    slots = [EngineSlot(pool, rank) for pool in range(5) for rank in range(8)]
    ports = [side_channel_port(20000, slot) for slot in slots]
    assert len(set(ports)) == len(ports)
    assert min(ports) == 20000


def test_same_rank_in_two_pools_gets_different_ports() -> None:
    assert side_channel_port(20000, EngineSlot(0, 0)) != side_channel_port(20000, EngineSlot(1, 0))


def test_rank_beyond_pool_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="local_rank"):
        side_channel_port(20000, EngineSlot(0, PORTS_PER_POOL))


def test_first_free_port_skips_a_port_in_use() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert first_free_port(taken, taken + 10) != taken


@pytest.mark.parametrize(
    ("slot", "num_pools", "cpus", "expected"),
    [
        (EngineSlot(0, 0), 2, [0, 1], "0"),  # PD: prefill on core 0
        (EngineSlot(1, 0), 2, [0, 1], "1"),  # PD: decode on core 1
        (EngineSlot(0, 1), 1, [0, 1], "1"),  # colocated, second replica
        (EngineSlot(2, 0), 3, [0, 1], "0"),  # third engine shares a core
        (EngineSlot(1, 1), 2, [4, 5, 6, 7], "7"),
    ],
)
def test_engines_are_spread_over_cores(
    slot: EngineSlot, num_pools: int, cpus: list[int], expected: str
) -> None:
    assert omp_threads_bind(slot, num_pools, cpus) == expected


def test_connector_roles() -> None:
    model = ModelConfig(model_id="m", model="org/model", kv_transfer={
        "progress_thread_delay_us": 2000, "kv_lease_s": 12})
    prefill = engine_args(model, "prefill", "e1").kv_transfer_config
    decode = engine_args(model, "decode", "e2").kv_transfer_config
    assert prefill is not None and decode is not None
    assert prefill["kv_role"] == "kv_producer"
    assert decode["kv_role"] == "kv_consumer"
    assert decode["kv_load_failure_policy"] == "recompute"
    assert decode["kv_connector_module_path"] == QUIET_CONNECTOR_MODULE
    assert decode["kv_connector_extra_config"] == {"pdserve_progress_thread_delay_us": 2000,
                                                   "kv_lease_duration": 12}
    # vLLM reads the lease under this name (prefill side: scheduler; both: worker)
    kv_config = KVTransferConfig(**prefill)
    assert kv_config.get_from_extra_config("kv_lease_duration", 30) == 12
    assert engine_args(model, "decode", "e2").worker_extension_cls == NIXL_STATE_EXTENSION
    for role in ("colocated", "embed"):
        args = engine_args(model, role, "e3")
        assert args.kv_transfer_config is None and not args.worker_extension_cls


@pytest.mark.parametrize(
    ("bind", "cores"), [("1", [1]), ("0-3", [0, 1, 2, 3]), ("0,2", [0, 2]), ("0-1,5", [0, 1, 5]),
                        ("2,0,0", [0, 2])])
def test_cpu_list_reads_vllms_binding_syntax(bind: str, cores: list[int]) -> None:
    assert cpu_list(bind) == cores


def test_a_bound_single_process_engine_gets_the_workers_openmp_settings() -> None:
    assert single_process_env("0-1", ld_preload="") == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "2",
        "OMP_PLACES": "{0,1}", "OMP_PROC_BIND": "true"}
    assert single_process_env(None) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


OPENMP_VARIABLES = ("OMP_NUM_THREADS", "OMP_PLACES", "OMP_PROC_BIND", "KMP_AFFINITY",
                    "KMP_BLOCKTIME", "KMP_TPAUSE", "GOMP_CPU_AFFINITY")


@pytest.mark.parametrize("ld_preload", ["", "/x/libiomp5.so:/x/libtcmalloc.so", "/x/libgomp.so"])
def test_vllms_omp_settings_for_a_worker_are_the_ones_pdserve_copies(
    monkeypatch: pytest.MonkeyPatch, ld_preload: str
) -> None:
    """Pins the assumption `single_process_env` rests on: for a worker bound to these cores,
    vLLM's OpenMP manager sets exactly these variables, whichever OpenMP runtime is preloaded.
    An upgrade that sets more (or other) fails here, and `single_process_env` must follow it."""
    import os
    from types import SimpleNamespace

    from vllm.utils.ompmultiprocessing import OMPProcessManager

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1")
    monkeypatch.setenv("LD_PRELOAD", ld_preload)
    for name in OPENMP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    parallel = SimpleNamespace(local_world_size=1, data_parallel_rank_local=0,
                               _api_process_count=1)
    manager = OMPProcessManager(SimpleNamespace(parallel_config=parallel,
                                                kv_transfer_config=None))
    with manager.configure_omp_envs(rank=0, local_rank=0):
        seen = {name: os.environ[name] for name in OPENMP_VARIABLES if name in os.environ}
    expected = single_process_env("1", ld_preload=ld_preload)
    expected.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
    assert seen == expected


def test_vllms_cpu_platform_keeps_one_worker_in_process_only_under_its_switch() -> None:
    """Pins `platforms/cpu.py`: the uni-process executor is replaced by the multiprocessing
    one unless `VLLM_ENABLE_V1_MULTIPROCESSING` is "0" (what `single_process_env` sets)."""
    import inspect

    from vllm.platforms.cpu import CpuPlatform

    source = inspect.getsource(CpuPlatform.check_and_update_config)
    assert 'os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "1"' in source
    assert 'distributed_executor_backend = "mp"' in source


@pytest.mark.parametrize(("kwargs", "workers"), [
    ({}, 0), ({"tensor_parallel_size": 1, "distributed_executor_backend": "uni"}, 0),
    ({"tensor_parallel_size": 2}, 2), ({"pipeline_parallel_size": 2}, 2),
    ({"prefill_context_parallel_size": 2}, 2), ({"data_parallel_size": 2}, 1),
    ({"distributed_executor_backend": "mp"}, 1)])
def test_only_an_engine_without_worker_processes_computes_in_its_engine_core(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict, workers: int,
) -> None:
    assert worker_processes(kwargs) == workers
    monkeypatch.setattr("os.environ", {})  # apply_engine_env writes the process environment
    env = apply_engine_env(slot=EngineSlot(1, 0), num_pools=2, base_port=20000,
                           host="127.0.0.1", bind_cpus=True, workers=workers)
    assert ("VLLM_ENABLE_V1_MULTIPROCESSING" in env) is (workers == 0)
    assert ("OMP_PLACES" in env) is (workers == 0)  # else vLLM's executor sets it per worker
    assert len(env["VLLM_CPU_OMP_THREADS_BIND"].split("|")) == max(workers, 1)  # vLLM asserts it


def test_the_operator_may_keep_vllms_worker_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.environ", {SINGLE_PROCESS_SWITCH: "0"})
    env = apply_engine_env(slot=EngineSlot(0, 0), num_pools=1, base_port=20000,
                           host="127.0.0.1", bind_cpus=True, workers=0)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in env and "OMP_PLACES" not in env


def test_each_worker_of_an_engine_gets_its_own_core() -> None:
    assert omp_threads_bind(EngineSlot(0, 0), 2, [0, 1, 2, 3], workers=2) == "0|1"
    assert omp_threads_bind(EngineSlot(1, 0), 2, [0, 1, 2, 3], workers=2) == "2|3"
    assert omp_threads_bind(EngineSlot(1, 0), 2, [0, 1], workers=2) == "0|1"  # shared beyond


def test_vllm_takes_one_core_list_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's OpenMP manager needs as many `|`-separated lists as the engine has workers."""
    from types import SimpleNamespace

    from vllm.utils.ompmultiprocessing import OMPProcessManager

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND",
                       omp_threads_bind(EngineSlot(0, 0), 1, [0, 1], workers=2))
    parallel = SimpleNamespace(local_world_size=2, data_parallel_rank_local=0,
                               _api_process_count=1)
    manager = OMPProcessManager(SimpleNamespace(parallel_config=parallel,
                                                kv_transfer_config=None))
    assert [list(map(int, cores)) for cores in manager.cpu_lists] == [[0], [1]]


def test_engines_bind_their_sockets_on_the_nodes_cluster_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NIXL's side channel and vLLM's KV-event sockets (`tcp://*:0` binds `VLLM_HOST_IP`) use
    the host's cluster address, not all interfaces: KV events carry prompt token ids."""
    monkeypatch.setattr("os.environ", {})
    env = apply_engine_env(slot=EngineSlot(0, 0), num_pools=1, base_port=20000,
                           host="127.0.0.1", bind_cpus=False)
    assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == env["VLLM_HOST_IP"] == "127.0.0.1"
