"""Where a benchmark step's CPU goes: CPU-seconds per process role of the system under test
(and, beside them, the seconds each role waited for a core).

Comparing a Serve graph with a plain engine by latency alone does not say which process pays
for the difference. A step snapshots the CPU time of every process in the started system's tree
(for a Ray app: the `serve run` driver, Ray's own daemons, the proxy, each replica and each
replica's vLLM processes) and of the harness itself (vLLM's load generator runs in it), and
reports the difference per role, e.g. `replica ingress`, `vllm worker`, `serve proxy`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable

import psutil

Snapshot = dict[tuple[int, float], tuple[str, float]]  # (pid, create_time) -> (role, CPU s)

#: The role of this process: the harness, in which vLLM's load generator runs.
HARNESS_ROLE = "harness (load generator)"
#: The role of a vLLM engine core process (a one-worker engine computes in it).
ENGINE_CORE_ROLE = "vllm engine core"
#: Ray's daemons and helper processes, by process name or a command-line marker.
RAY_SYSTEM_NAMES = frozenset({"raylet", "gcs_server"})
RAY_SYSTEM_MARKERS = ("ray/dashboard", "ray/_private", "ray/autoscaler", "ray::IDLE",
                      "ray::core_worker", "runtime_env")


def role(name: str, cmdline: list[str]) -> str:
    """The role of a process, from its name and command line (what `ps` shows)."""
    first = cmdline[0] if cmdline else ""
    command = " ".join(cmdline)
    if name.startswith("VLLM::"):
        kind = name.removeprefix("VLLM::").split("_")[0].split(" ")[0]
        return {"EngineCore": ENGINE_CORE_ROLE, "Worker": "vllm worker"}.get(
            kind, f"vllm {kind}")
    if first.startswith("ray::ServeReplica:"):
        return "replica " + first.removeprefix("ray::ServeReplica:").split(":", 1)[-1]
    if first.startswith("ray::ProxyActor"):
        return "serve proxy"
    if first.startswith("ray::ServeController"):
        return "serve controller"
    if name in RAY_SYSTEM_NAMES or any(m in command for m in RAY_SYSTEM_MARKERS):
        return "ray system"
    if "vllm.entrypoints" in command:
        return "vllm api server"
    if "serve run" in command:
        return "serve run driver"
    return name or "?"


def process_tree(root_pid: int) -> list[psutil.Process]:
    """`root_pid` and all its descendants (empty if it is gone)."""
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _tree_snapshot(root_pid: int, seconds: Callable[[psutil.Process, str], float]) -> Snapshot:
    """`seconds(process, role)` of every process in `root_pid`'s tree, keyed and named alike
    for `by_role` (a process gone meanwhile is left out)."""
    snap: Snapshot = {}
    for proc in process_tree(root_pid):
        try:
            with proc.oneshot():
                name = role(proc.name(), proc.cmdline())
                snap[(proc.pid, proc.create_time())] = (name, seconds(proc, name))
        except psutil.Error:
            continue
    return snap


def _cpu_s(proc: psutil.Process, _role: str = "") -> float:
    times = proc.cpu_times()
    return times.user + times.system


def snapshot(root_pid: int) -> Snapshot:
    """CPU seconds so far of `root_pid`'s process tree and of this process (the harness)."""
    snap = _tree_snapshot(root_pid, _cpu_s)
    me = psutil.Process(os.getpid())
    snap[(me.pid, me.create_time())] = (HARNESS_ROLE, _cpu_s(me))
    return snap


def runqueue_wait_s(pid: int, main_thread_only: bool = False) -> float:
    """Seconds `pid`'s live threads (or its main thread only) have waited on a run queue,
    runnable but not running (`/proc/PID/task/TID/schedstat`'s second field; 0.0 where the
    kernel keeps no schedstat or the process is gone). What a process lost to others on its
    cores: its CPU time does not show it."""
    total = 0
    try:
        tasks = [str(pid)] if main_thread_only else os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def wait_snapshot(root_pid: int) -> Snapshot:
    """Run-queue wait so far (`runqueue_wait_s`) of `root_pid`'s process tree, keyed and
    named as `snapshot` keys and names CPU time (`by_role` takes either): a vLLM engine core's
    main thread only (it steps the model: one OMP thread per bound core, here one; its ~50
    other threads, 39 of them gloo TCP loops waking several times a second, wait briefly but
    often, which summed would rival the compute thread's wait), every thread of the others. A
    thread that ends between two snapshots takes its wait with it."""
    return _tree_snapshot(root_pid, lambda proc, name: runqueue_wait_s(
        proc.pid, main_thread_only=name == ENGINE_CORE_ROLE))


def by_role(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds per role between two snapshots (a process started in between counts from
    zero; one that exited in between is missed), largest first."""
    used: dict[str, float] = defaultdict(float)
    for key, (name, cpu) in after.items():
        # a process's total never falls; a wait snapshot's does when a thread ends
        used[name] += max(0.0, cpu - before.get(key, (name, 0.0))[1])
    return {name: round(cpu, 2) for name, cpu in sorted(used.items(), key=lambda kv: -kv[1])}


def engine_core_cpu_s(cpu_by_role: dict[str, float] | None) -> float | None:
    """CPU seconds a step's vLLM engine core processes used (from `by_role`; a one-worker
    engine computes in it), or None without per-process accounting. Given a step's `wait_s`
    instead, their run-queue wait."""
    if not cpu_by_role:
        return None
    return sum(v for k, v in cpu_by_role.items() if k.startswith(ENGINE_CORE_ROLE))
