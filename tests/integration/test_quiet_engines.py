"""Idle engines cost (almost) nothing and run at normal priority: the PD pools' NIXL agents
poll with a delay (pdserve's quiet connector), compute and NIXL threads sit on different
cores, every engine process runs at the configured niceness, and a one-worker engine computes
in its engine-core process (no worker process, no ring between the two to spin on); all read
from the engine processes themselves."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import psutil
from client import sse_chunks
from conftest import ENGINE_DEPLOYMENTS, deployment, replicas_of, wait_drained
from shapes import EMBED_MODEL, PD_MODEL

from pdserve.deployments.config import KVTransferSettings
from pdserve.kv_transfer.huge_pages import huge_bytes_in, thp_mode

NIXL_POOLS = [f"{PD_MODEL}-prefill", f"{PD_MODEL}-decode"]
EMBED_POOL = f"{EMBED_MODEL}-embed"  # one replica, on Ray's own router (not in routing_state)
#: Loose on purpose (a noisy 2-core box); `benchmarks/kv_transfer_bench.py` has the tight number.
IDLE_CORES_PER_ENGINE = 0.2
IDLE_WINDOW_S = 10.0
#: Seconds of a steady stream measured.
WINDOW_S = 3.0


def engines() -> dict[str, list[int]]:
    """Each engine replica's processes: the Serve replica and the vLLM processes it started."""
    found = {f"{name}/{replica}": deployment(name).engine_processes.remote(replica=replica)
             .result() for name in ENGINE_DEPLOYMENTS for replica in replicas_of(name)}
    found[EMBED_POOL] = deployment(EMBED_POOL).engine_processes.remote().result()
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds so far, from /proc/<pid>/stat."""
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def test_pd_engines_use_the_quiet_connector_with_its_delay(client: httpx.Client) -> None:
    for name in NIXL_POOLS:
        (replica,) = replicas_of(name)
        (worker,) = deployment(name).nixl_state.remote(replica=replica).result()
        assert worker["connector"] == "pdserve.kv_transfer.quiet_nixl.NixlConnector", worker
        assert worker["delays_us"] == [KVTransferSettings().progress_thread_delay_us], worker
        assert worker["ucx_keepalive_interval"] == "inf", worker
        compute = set(worker["compute_cores"])
        assert len(compute) == 1, f"{name}: compute thread not bound to one core: {worker}"
        assert worker["agent_threads"], f"{name}: no NIXL agent threads recorded"
        for tid, cores in worker["agent_threads"].items():
            assert not compute & set(cores), f"{name}: NIXL thread {tid} shares {compute}"


def test_pd_engines_keep_their_kv_cache_on_huge_pages(client: httpx.Client) -> None:
    """The connector advises and collapses the KV cache before NIXL registers it (NIXL's
    cross-memory reads ran at about twice the speed on 2 MiB pages here), and reports truly
    what it got: the kernel's AnonHugePages over the collapsed ranges of the worker process
    holds them all. Only a kernel out of free 2 MiB pages (fragmented memory, seen once in a
    full run) may leave part of it small."""
    for name in NIXL_POOLS:
        (worker,) = deployment(name).nixl_state.remote(replica=replicas_of(name)[0]).result()
        pages = worker["kv_huge_pages"]
        assert pages["thp_mode"] == thp_mode(), pages
        assert pages["bytes"] > 0 and pages["advised"], f"{name}: {pages}"
        assert pages["collapsed_bytes"] == sum(length for _, length in pages["ranges"]), pages
        assert huge_bytes_in(pages["ranges"], worker["pid"]) >= pages["collapsed_bytes"], (
            f"{name}: {pages}")
        if not pages["collapsed"]:
            assert pages["errors"] == ["madvise(MADV_COLLAPSE): Cannot allocate memory"], (
                f"{name}: {pages}")


def test_pd_engines_compute_on_different_cores(client: httpx.Client) -> None:
    """vLLM's NIXL worker moves the compute thread to the host's last core; pdserve moves it
    back, so the prefill and decode engines do not share one core."""
    cores = [deployment(name).nixl_state.remote(replica=replicas_of(name)[0]).result()[0]
             ["compute_cores"] for name in NIXL_POOLS]
    assert cores[0] != cores[1], cores


def vllm_processes(pids: list[int]) -> dict[int, str]:
    return {pid: name for pid in pids if (name := psutil.Process(pid).name()).startswith("VLLM::")}


def test_every_engine_process_runs_at_normal_priority(client: httpx.Client) -> None:
    for engine, pids in engines().items():
        assert vllm_processes(pids), f"{engine}: no vLLM process among {pids}"
        nice = {pid: psutil.Process(pid).nice() for pid in pids}
        assert set(nice.values()) == {0}, f"{engine}: {nice}"


def test_one_worker_engines_compute_in_their_engine_core(client: httpx.Client) -> None:
    """vLLM's CPU platform starts a worker process beside the engine core; pdserve's engine
    environment (`placement.single_process_env`) keeps a one-worker engine's model in the
    engine core: one vLLM process per engine, and it is the one that decodes."""
    for engine, pids in engines().items():
        names = vllm_processes(pids)
        assert sorted(names.values()) == ["VLLM::EngineCore"], f"{engine}: {names}"
        (core,) = names
        environ = dict(line.split("=", 1) for line in
                       Path(f"/proc/{core}/environ").read_text().split("\0") if "=" in line)
        assert environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0", engine
        # the OpenMP settings of the one core pdserve bound the engine to reached its process
        bound = environ.get("VLLM_CPU_OMP_THREADS_BIND")
        assert bound is not None and environ.get("OMP_NUM_THREADS") == "1", (engine, environ)
        assert psutil.Process(core).cpu_affinity() == [int(bound)], (engine, bound)
    name = f"{PD_MODEL}-decode"
    (replica,) = replicas_of(name)
    (core,) = vllm_processes(deployment(name).engine_processes.remote(replica=replica).result())
    body = {"model": PD_MODEL, "prompt": "alpha beta", "max_tokens": 1500, "ignore_eos": True,
            "temperature": 0.0, "stream": True}
    used = None
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        for chunks, _ in enumerate(sse_chunks(response), start=1):
            if chunks == 20:  # decoding steadily: measure a window
                start, before = time.monotonic(), cpu_seconds([core])
            elif chunks > 20 and time.monotonic() - start >= WINDOW_S:
                used = (cpu_seconds([core]) - before) / (time.monotonic() - start)
                break  # leaving the stream aborts the rest of the request
    assert used is not None, f"the stream ended before a {WINDOW_S} s window ({chunks} chunks)"
    print(f"decode engine core while streaming: {used:.2f} core")
    assert used > 0.2, f"the engine core barely ran ({used:.2f} core): who decodes?"


def test_idle_engines_use_almost_no_cpu(client: httpx.Client) -> None:
    wait_drained()
    processes = {engine: pids[1:] for engine, pids in engines().items()}  # the vLLM processes
    time.sleep(2.0)
    before = {engine: cpu_seconds(pids) for engine, pids in processes.items()}
    time.sleep(IDLE_WINDOW_S)
    used = {engine: (cpu_seconds(pids) - before[engine]) / IDLE_WINDOW_S
            for engine, pids in processes.items()}
    busy = {engine: round(cores, 3) for engine, cores in used.items()
            if cores > IDLE_CORES_PER_ENGINE}
    assert not busy, f"idle engines using more than {IDLE_CORES_PER_ENGINE} core: {busy} " \
                     f"(all: {used})"
