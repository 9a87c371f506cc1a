"""No vLLM engine outlives its replica: a tiny watcher process kills the engine processes a
replica started once that replica is gone, however it went (`kill -9`, `ray stop --force`, a
crash).

vLLM's engine core and workers are children of the replica process. When Ray stops a replica
gracefully, the engine shuts down with it; when the replica is killed, nothing tells them, and
they were seen running (two of them spinning a core each) for 17+ minutes after
`ray stop --force`. The watcher is started by the replica once its engine is up; it waits on a
pidfd of the replica (no polling while the replica lives), then kills every recorded engine
process that is still the same process (pid and start time). It runs in a session of its own,
so the signals that kill the replica's process group do not kill it first, and it exits once
its work is done or the engine processes are gone.

Run as a script (`python reaper.py <replica pid> <pid>:<start time>...`) so it imports nothing
but psutil.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys

import psutil

#: How often the watcher checks that the engine processes it guards still exist.
CHECK_S = 30.0


def guard_engine_processes(replica_pid: int | None = None) -> subprocess.Popen | None:
    """Start a watcher over the engine processes (every descendant) of `replica_pid`
    (default: this process); None if there are none."""
    replica = psutil.Process(replica_pid)
    targets = [f"{p.pid}:{p.create_time()!r}" for p in replica.children(recursive=True)]
    if not targets:
        return None
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(replica.pid), *targets],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


def _same_process(pid: int, started: float) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - started) < 0.01 else None
    except psutil.Error:
        return None


def _alive(targets: list[tuple[int, float]]) -> list[psutil.Process]:
    return [p for pid, started in targets if (p := _same_process(pid, started)) is not None]


def watch(replica_pid: int, targets: list[tuple[int, float]]) -> int:
    """Block until the replica exits, then kill what is left; the number of processes killed."""
    try:
        pidfd = os.pidfd_open(replica_pid)
    except ProcessLookupError:
        pidfd = None  # already gone
    while pidfd is not None:
        ready, _, _ = select.select([pidfd], [], [], CHECK_S)
        if ready:
            break
        if not _alive(targets):
            return 0  # the engine went away by itself (shut down with a live replica)
    survivors = _alive(targets)
    for proc in survivors:
        try:
            proc.kill()
        except psutil.Error:
            continue
    return len(survivors)


def main(argv: list[str]) -> int:
    replica_pid = int(argv[0])
    targets = [(int(pid), float(started)) for pid, started in
               (arg.split(":", 1) for arg in argv[1:])]
    watch(replica_pid, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
