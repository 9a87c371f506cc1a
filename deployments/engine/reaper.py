"""No vLLM engine outlives its replica: a tiny watcher process kills the engine processes a
replica started once that replica is gone, however it went (`kill -9`, `ray stop --force`, a
crash).

vLLM's engine core and workers are children of the replica process. When Ray stops a replica
gracefully, the engine shuts down with it; when the replica is killed, nothing tells them, and
they were seen running (two of them spinning a core each) for 17+ minutes after
`ray stop --force`. The watcher is started by the replica once its engine is up; it waits on a
pidfd of the replica (no polling while the replica lives), then kills every recorded engine
process that is still the same process (pid and start time): SIGTERM first, so vLLM shuts
down cleanly, SIGKILL a few seconds later. It runs in a session of its own,
so the signals that kill the replica's process group do not kill it first, and it exits once
its work is done or the engine processes are gone.

Run as a script (`python reaper.py fd:<pidfd>|<replica pid> <pid>:<start time>...`) so it
imports nothing but psutil.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys

import psutil

#: How often the watcher checks that the engine processes it guards still exist.
CHECK_S = 30.0
#: vLLM names its engine-core and worker processes `VLLM::EngineCore`, `VLLM::Worker_…`.
ENGINE_PREFIX = "VLLM::"
#: After the replica is gone: SIGTERM (vLLM shuts down cleanly), then SIGKILL after this long.
GRACE_S = 5.0


def guard_engine_processes(replica_pid: int | None = None) -> subprocess.Popen | None:
    """Start a watcher over the vLLM engine processes among the descendants of `replica_pid`
    (default: this process); None if there are none. The replica's pidfd is opened here and
    handed over, so the watcher cannot end up waiting on another process that reused the pid."""
    replica = psutil.Process(replica_pid)
    targets = [f"{p.pid}:{p.create_time()!r}" for p in replica.children(recursive=True)
               if _name(p).startswith(ENGINE_PREFIX)]
    if not targets:
        return None
    pidfd = os.pidfd_open(replica.pid)
    try:
        return subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), f"fd:{pidfd}", *targets],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, pass_fds=(pidfd,),
        )
    finally:
        os.close(pidfd)


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


def _same_process(pid: int, started: float) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - started) < 0.01 else None
    except psutil.Error:
        return None


def _alive(targets: list[tuple[int, float]]) -> list[psutil.Process]:
    return [p for pid, started in targets if (p := _same_process(pid, started)) is not None]


def watch(pidfd: int | None, targets: list[tuple[int, float]], grace_s: float = GRACE_S) -> int:
    """Block until the replica (`pidfd`; None: already gone) exits, then stop what is left:
    SIGTERM, SIGKILL after `grace_s`. Returns how many processes were left."""
    while pidfd is not None:
        ready, _, _ = select.select([pidfd], [], [], CHECK_S)
        if ready:
            break
        if not _alive(targets):
            return 0  # the engine went away by itself (shut down with a live replica)
    survivors = _alive(targets)
    for proc in survivors:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, stubborn = psutil.wait_procs(survivors, timeout=grace_s)
    for proc in stubborn:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return len(survivors)


def main(argv: list[str]) -> int:
    replica = argv[0]
    if replica.startswith("fd:"):
        pidfd: int | None = int(replica[3:])
    else:
        try:
            pidfd = os.pidfd_open(int(replica))
        except ProcessLookupError:
            pidfd = None
    targets = [(int(pid), float(started)) for pid, started in
               (arg.split(":", 1) for arg in argv[1:])]
    watch(pidfd, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
