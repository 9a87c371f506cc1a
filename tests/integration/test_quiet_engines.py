"""Idle engines cost (almost) nothing and run at normal priority: the PD pools' NIXL agents
poll with a delay (pdserve's quiet connector), compute and NIXL threads sit on different
cores, every engine process runs at the configured niceness, and a busy engine's core process
sleeps while its worker computes; all read from the engine processes themselves."""

from __future__ import annotations

import os
import time

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
#: A decoding engine core that spins takes a whole core; one that sleeps takes its share of the
#: steps' work (its scheduler and output handling).
SLEEPING_CORE_MAX = 0.6
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


def test_every_engine_process_runs_at_normal_priority(client: httpx.Client) -> None:
    for engine, pids in engines().items():
        assert len(pids) >= 3, f"{engine}: expected replica, engine core and worker: {pids}"
        nice = {pid: psutil.Process(pid).nice() for pid in pids}
        assert set(nice.values()) == {0}, f"{engine}: {nice}"


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


def by_name(pids: list[int], prefix: str) -> int:
    (pid,) = [p for p in pids if psutil.Process(p).name().startswith(prefix)]
    return pid


def test_a_decoding_engine_core_sleeps_while_its_worker_computes(client: httpx.Client) -> None:
    """vLLM's engine core spins (a whole core) while it waits for its worker's step, unless
    pdserve's plugin (`sleeping_wait.py`) made it wait on a socket: measured on the decode
    engine during a long stream, against the worker that does the step's work."""
    name = f"{PD_MODEL}-decode"
    (replica,) = replicas_of(name)
    pids = deployment(name).engine_processes.remote(replica=replica).result()
    core, worker = by_name(pids, "VLLM::EngineCor"), by_name(pids, "VLLM::Worker")
    body = {"model": PD_MODEL, "prompt": "alpha beta", "max_tokens": 1500, "ignore_eos": True,
            "temperature": 0.0, "stream": True}
    used: list[float] = []
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        for chunks, _ in enumerate(sse_chunks(response), start=1):
            if chunks == 20:  # decoding steadily: measure a window
                start = time.monotonic()
                before = cpu_seconds([core]), cpu_seconds([worker])
            elif chunks > 20 and time.monotonic() - start >= WINDOW_S:
                elapsed = time.monotonic() - start
                used = [(cpu_seconds([pid]) - was) / elapsed
                        for pid, was in zip((core, worker), before, strict=True)]
                break  # leaving the stream aborts the rest of the request
    assert used, f"the stream ended before a {WINDOW_S} s window ({chunks} chunks)"
    core_cores, worker_cores = used
    print(f"decode engine while streaming: core {core_cores:.2f}, worker {worker_cores:.2f} core")
    assert worker_cores > 0.2, f"worker barely ran ({worker_cores:.2f} core): not decoding?"
    assert core_cores < SLEEPING_CORE_MAX, (
        f"engine core used {core_cores:.2f} core while its worker used {worker_cores:.2f}")
