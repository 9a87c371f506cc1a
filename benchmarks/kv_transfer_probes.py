"""The measurements of the KV-transfer benchmark, each run in a fresh process by
`kv_transfer_bench.py` (engines and NIXL agents are per process): memcpy, raw NIXL between
two processes, the PD path between two vLLM engines, and an idle engine of each pool kind.

`python -m pdserve.benchmarks.kv_transfer_probes PROBE JSON_ARGS` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from pdserve.benchmarks.cpuwatch import proc_stat

#: Engine processes bound like a PD pair of `serve_configs/default.yaml` on a 2-core host.
PREFILL_CORE, DECODE_CORE = 0, 1
#: UCX worker threads vLLM's NIXL connector asks for (`kv_connector_extra_config.num_threads`).
VLLM_NIXL_THREADS = 4
SIDE_CHANNEL_PORTS = {"prefill": 23100, "decode": 23101, "colocated": 23102, "embed": 23103}


def page_backed(size: int, fill: int, huge_pages: bool) -> Any:
    """A touched uint8 buffer of `size` bytes on 2 MiB pages, as pdserve's connector puts the
    KV cache (`kv_transfer/huge_pages.py`), or kept on 4 KiB pages; fails when the kernel
    refuses, so a report never labels small pages huge."""
    from pdserve.kv_transfer.huge_pages import aligned_buffer, back_tensors, small_pages

    buffer = aligned_buffer(size, fill)
    if not huge_pages:
        return small_pages(buffer)
    outcome = back_tensors([buffer])
    if not outcome.collapsed:
        raise RuntimeError(f"no huge pages for the probe's buffers: {outcome.errors}")
    return buffer


# -- memcpy ---------------------------------------------------------------------------------
def memcpy(sizes: list[int], reps: int) -> dict[str, Any]:
    """GB/s of one thread copying `size` bytes between two buffers (pages touched first), on
    huge pages (`gbps`, the KV cache's pages) and on torch's own 4 KiB pages (`gbps_4k`)."""
    import torch

    torch.set_num_threads(1)
    os.sched_setaffinity(0, {DECODE_CORE})
    out: dict[str, dict[str, list[float]]] = {"gbps": {}, "gbps_4k": {}}
    for key, huge in (("gbps", True), ("gbps_4k", False)):
        for size in sizes:
            src, dst = page_backed(size, 1, huge), page_backed(size, 0, huge)
            dst.copy_(src)
            out[key][str(size)] = []
            for _ in range(reps):
                started = time.perf_counter()
                dst.copy_(src)
                out[key][str(size)].append(size / (time.perf_counter() - started) / 1e9)
            del src, dst
    return out


# -- raw NIXL -------------------------------------------------------------------------------
def quiet_agents(delay_us: int) -> None:
    """NIXL agents of this process poll like the PD pools' (pdserve's quiet bindings)."""
    from pdserve.kv_transfer import quiet_nixl

    quiet_nixl.install().delay_us = delay_us


def _nixl_source(conn: Any, size: int, delay_us: int, huge_pages: bool) -> None:
    """The remote side: registers `size` bytes, sends its metadata and address, then waits."""
    from vllm.distributed.nixl_utils import NixlWrapper, nixl_agent_config

    os.sched_setaffinity(0, {PREFILL_CORE})
    quiet_agents(delay_us)
    agent = NixlWrapper("src", nixl_agent_config(num_threads=VLLM_NIXL_THREADS))
    buffer = page_backed(size, 1, huge_pages)
    agent.register_memory([(buffer.data_ptr(), size, 0, "")], "DRAM")
    conn.send((agent.get_agent_metadata(), buffer.data_ptr()))
    conn.recv()  # the reader is done


def piece_bytes(size: int, layout: dict[str, int]) -> int:
    """Descriptor size of a layout: `{"pieces": n}` cuts a transfer into n equal descriptors
    (1: one; the model's layers: what vLLM's merged blocks came to), `{"bytes": b}` into
    descriptors of b bytes (one KV block of one layer, vLLM's unit before merging)."""
    if "pieces" in layout:
        return size // layout["pieces"]
    return layout["bytes"]


def timed_reads(agent: Any, local_base: int, remote_base: int, remote: Any, sizes: list[int],
                layouts: dict[str, dict[str, int]], reps: int
                ) -> tuple[dict[str, dict[str, dict[str, list[float]]]],
                           dict[str, dict[str, int]], int]:
    """`reps` timed NIXL READs (after one that warms connections and registration caches) of
    each size into `local_base` from `remote_base` of agent `remote`, per descriptor layout.
    Returns GB/s per layout and size (`wall`: post to completion with this process polling;
    `telemetry`: over NIXL's own transfer time), the descriptors per layout and size, and every
    byte read (warm-ups included)."""
    import numpy as np

    out: dict[str, dict[str, dict[str, list[float]]]] = {name: {} for name in layouts}
    descriptors: dict[str, dict[str, int]] = {name: {} for name in layouts}
    moved_total = 0
    for size in sizes:
        for name, layout in layouts.items():
            piece = piece_bytes(size, layout)
            offsets = np.arange(0, size - size % piece, piece, dtype=np.uint64)
            local = np.stack([offsets + local_base, np.full_like(offsets, piece),
                              np.zeros_like(offsets)], axis=1)
            far = local.copy()
            far[:, 0] = offsets + remote_base
            handle = agent.initialize_xfer("READ", agent.get_xfer_descs(local, "DRAM"),
                                           agent.get_xfer_descs(far, "DRAM"), remote)
            moved = len(offsets) * piece
            wall, telemetry = [], []
            for _ in range(reps + 1):
                started = time.perf_counter()
                state = agent.transfer(handle)
                while state == "PROC":
                    state = agent.check_xfer_state(handle)
                if state != "DONE":
                    raise RuntimeError(f"NIXL transfer failed: {state}")
                wall.append(moved / (time.perf_counter() - started) / 1e9)
                telemetry.append(moved / agent.get_xfer_telemetry(handle).xferDuration / 1e3)
                moved_total += moved
            out[name][str(size)] = {"wall": wall[1:], "telemetry": telemetry[1:]}
            descriptors[name][str(size)] = len(offsets)
            agent.release_xfer_handle(handle)
    return out, descriptors, moved_total


def raw_nixl(sizes: list[int], layouts: dict[str, dict[str, int]], reps: int,
             delay_us: int, huge_pages: bool = True) -> dict[str, Any]:
    """GB/s of NIXL READs (UCX) of `size` bytes from another process, per descriptor layout:
    `wall` from post to completion with the reader polling (NIXL's best case), `telemetry`
    NIXL's own transfer time (what vLLM's connector reports for the PD path). The agents are
    configured as vLLM configures its own (UCX, 4 threads), and their progress threads poll
    every `delay_us` (0 would spin on both cores of this box). Both buffers are on huge pages
    unless `huge_pages` is false."""
    from vllm.distributed.nixl_utils import NixlWrapper, nixl_agent_config

    os.sched_setaffinity(0, {DECODE_CORE})
    quiet_agents(delay_us)
    size_max = max(sizes)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    source = ctx.Process(target=_nixl_source, args=(child, size_max, delay_us, huge_pages),
                         daemon=True)
    source.start()
    metadata, remote_base = parent.recv()
    agent = NixlWrapper("dst", nixl_agent_config(num_threads=VLLM_NIXL_THREADS,
                                                       capture_telemetry=True))
    buffer = page_backed(size_max, 0, huge_pages)
    agent.register_memory([(buffer.data_ptr(), size_max, 0, "")], "DRAM")
    remote = agent.add_remote_agent(metadata)
    try:
        out, _, _ = timed_reads(agent, buffer.data_ptr(), remote_base, remote, sizes, layouts,
                                reps)
    finally:
        parent.send("done")
        source.join(timeout=30)
    return {"gbps": out}


# -- engines --------------------------------------------------------------------------------
class TransferLog:
    """A vLLM stat logger factory that keeps the NIXL connector's per-transfer telemetry."""

    def __init__(self) -> None:
        self.durations_s: list[float] = []
        self.bytes: list[int] = []
        self.descriptors: list[int] = []

    def factory(self) -> type:
        from vllm.v1.metrics.loggers import StatLoggerBase

        log = self

        class _Recorder(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, *_: Any, **__: Any) -> None:
                data = getattr(scheduler_stats, "kv_connector_stats", None) or {}
                log.durations_s += data.get("transfer_duration", [])
                log.bytes += data.get("bytes_transferred", [])
                log.descriptors += data.get("num_descriptors", [])

            def log_engine_initialized(self) -> None:
                pass

        return _Recorder


def engine_processes(before: set[int]) -> list[int]:
    """Processes started since `before` (an engine's core and worker)."""
    children = psutil.Process().children(recursive=True)
    return sorted(p.pid for p in children if p.pid not in before)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def start_engine(kind: str, model: str, engine_kwargs: dict[str, Any], core: int,
                 connector: dict[str, Any] | None, stat_loggers: list | None = None
                 ) -> tuple[Any, list[int]]:
    """One `AsyncLLM` bound to `core`, and its process ids."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
    os.environ["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(SIDE_CHANNEL_PORTS[kind])
    before = _children()
    args = AsyncEngineArgs(model=model, kv_transfer_config=connector, **engine_kwargs)
    engine = AsyncLLM.from_engine_args(args, stat_loggers=stat_loggers)
    return engine, engine_processes(before)


def connector_config(role: str, variant: str) -> dict[str, Any]:
    """`vllm`: vLLM's own NixlConnector (busy poll, vLLM's CPU binding); `quiet-<us>`:
    pdserve's, as the pools configure it (`quiet-0` busy-polls with pdserve's binding)."""
    from pdserve.deployments.engine.args import KV_ROLES
    from pdserve.kv_transfer.connector import kv_transfer_config

    if variant == "vllm":
        return {"kv_connector": "NixlConnector", "kv_buffer_device": "cpu",
                "kv_role": "kv_producer" if role == "prefill" else "kv_consumer",
                "engine_id": f"bench-{role}", "kv_load_failure_policy": "recompute"}
    delay = int(variant.removeprefix("quiet-"))
    return kv_transfer_config(KV_ROLES[role], f"bench-{role}", "cpu", delay)  # type: ignore[index]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def nice_values(pids: list[int]) -> dict[str, int]:
    """Each process's nice value, read from /proc/<pid>/stat (field 19)."""
    out = {}
    for pid in pids:
        out[str(pid)] = int(proc_stat(f"/proc/{pid}/stat")[1][16])
    return out


def idle_cores(engines: dict[str, list[int]], settle_s: float, window_s: float
               ) -> dict[str, float]:
    """Cores each engine's processes used while nothing was asked of them."""
    time.sleep(settle_s)
    before = {name: cpu_seconds(pids) for name, pids in engines.items()}
    time.sleep(window_s)
    return {name: (cpu_seconds(pids) - before[name]) / window_s for name, pids in engines.items()}


async def _one_pull(prefill: Any, decode: Any, tokens: list[int], tag: str) -> float:
    """Prefill remotely, then time the decode engine's first token (KV pull + one step)."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    from pdserve.kv_transfer.params import KV_PARAMS_KEY, remote_decode_request

    params = SamplingParams(max_tokens=1, output_kind=RequestOutputKind.FINAL_ONLY,
                            extra_args={KV_PARAMS_KEY: remote_decode_request()})
    final = None
    async for output in prefill.generate({"prompt_token_ids": tokens}, params, f"p-{tag}"):
        final = output
    assert final is not None and final.kv_transfer_params, f"prefill {tag} gave no KV params"
    pull = SamplingParams(max_tokens=1, extra_args={KV_PARAMS_KEY: final.kv_transfer_params})
    started = time.perf_counter()
    async for _ in decode.generate({"prompt_token_ids": tokens}, pull, f"d-{tag}"):
        return time.perf_counter() - started
    raise RuntimeError(f"decode {tag} produced nothing")


async def _wait_for_transfer(log: TransferLog, count: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(log.durations_s) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def pd_path(variant: str, model: str, engine_kwargs: dict[str, Any], plan: dict[str, int],
            settle_s: float, idle_s: float) -> dict[str, Any]:
    """Prefill on one engine, pull its KV into another (`plan`: prompt length → repetitions):
    per length, the decode side's first-token time and NIXL's own transfer telemetry; then
    both engines' idle CPU."""
    log = TransferLog()
    prefill, prefill_pids = start_engine("prefill", model, engine_kwargs, PREFILL_CORE,
                                         connector_config("prefill", variant))
    decode, decode_pids = start_engine("decode", model, engine_kwargs, DECODE_CORE,
                                       connector_config("decode", variant), [log.factory()])
    rng = random.Random(0)

    async def run() -> dict[str, Any]:
        await _one_pull(prefill, decode, [rng.randrange(4, 500) for _ in range(256)], "warm")
        await _wait_for_transfer(log, 1)
        results: dict[str, dict[str, list]] = {}
        for length, reps in ((int(k), v) for k, v in plan.items()):
            rows = results.setdefault(str(length), {"pull_first_token_s": [], "transfer_s": [],
                                                     "bytes": [], "descriptors": []})
            for rep in range(reps):
                seen = len(log.durations_s)
                tokens = [rng.randrange(4, 500) for _ in range(length)]  # never cached
                rows["pull_first_token_s"].append(await _one_pull(prefill, decode, tokens,
                                                                  f"{length}-{rep}"))
                await _wait_for_transfer(log, seen + 1)
                rows["transfer_s"] += log.durations_s[seen:]
                rows["bytes"] += log.bytes[seen:]
                rows["descriptors"] += log.descriptors[seen:]
        return results

    try:
        results = asyncio.run(run())
        engines = {"prefill": prefill_pids, "decode": decode_pids}
        return {"variant": variant, "lengths": results,
                "idle_cores": idle_cores(engines, settle_s, idle_s),
                "nice": {name: nice_values(pids) for name, pids in engines.items()},
                "threads": {name: thread_cores(pids) for name, pids in engines.items()}}
    finally:
        prefill.shutdown()
        decode.shutdown()


def thread_cores(pids: list[int]) -> dict[str, str]:
    """`Cpus_allowed_list` of every thread of the engine's processes that used CPU (tid: cores),
    read from /proc/<pid>/task/*/status: where compute and NIXL threads may run."""
    out: dict[str, str] = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                fields = proc_stat(f"/proc/{pid}/task/{tid}/stat")[1]
                with open(f"/proc/{pid}/task/{tid}/status") as status:
                    cores = next(line.split(":", 1)[1].strip() for line in status
                                 if line.startswith("Cpus_allowed_list"))
            except OSError:
                continue
            ticks = int(fields[11]) + int(fields[12])
            if ticks > 10:
                out[f"{pid}/{tid}"] = f"{cores} ({ticks / os.sysconf('SC_CLK_TCK'):.1f} cpu-s)"
    return out


def idle_engine(kind: str, model: str, engine_kwargs: dict[str, Any], settle_s: float,
                idle_s: float) -> dict[str, Any]:
    """An engine without a connector (colocated or embedding pool) after one request."""
    engine, pids = start_engine(kind, model, engine_kwargs, PREFILL_CORE, None)

    async def one_request() -> None:
        if kind == "embed":
            from vllm import PoolingParams

            async for _ in engine.encode("warm up", PoolingParams(task="embed"), "e-warm"):
                pass
            return
        from vllm.sampling_params import SamplingParams

        async for _ in engine.generate({"prompt_token_ids": list(range(4, 260))},
                                       SamplingParams(max_tokens=4), "c-warm"):
            pass

    try:
        asyncio.run(one_request())
        return {"variant": kind, "idle_cores": idle_cores({kind: pids}, settle_s, idle_s),
                "nice": {kind: nice_values(pids)}}
    finally:
        engine.shutdown()


PROBES: dict[str, Callable[..., dict[str, Any]]] = {
    "memcpy": memcpy, "raw_nixl": raw_nixl, "pd_path": pd_path, "idle_engine": idle_engine,
}


def main(argv: list[str]) -> int:
    probe, args = argv[0], json.loads(argv[1])
    result = PROBES[probe](**args)
    result["probe_nice"] = os.nice(0)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
