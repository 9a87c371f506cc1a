"""How much CPU *other* processes used during a benchmark step, and reading `/proc` stat files.

On a small shared machine the load generator, the system under test and whatever
colleagues run all compete for the same cores. Counting the CPU-seconds of processes that
are neither this harness nor its descendants (the started system, its Ray cluster, its
engines) tells whether a step's numbers were measured on a quiet machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

Snapshot = dict[tuple[int, float], float]  # (pid, create_time) -> CPU seconds so far


def _our_pids() -> set[int]:
    me = psutil.Process(os.getpid())
    return {me.pid} | {p.pid for p in me.children(recursive=True)}


def foreign_cpu_snapshot() -> Snapshot:
    """CPU seconds (user + system) of every process outside our process tree."""
    ours = _our_pids()
    snap: Snapshot = {}
    for p in psutil.process_iter(["pid", "create_time", "cpu_times"]):
        t = p.info.get("cpu_times")
        if p.info["pid"] in ours or t is None:
            continue
        snap[(p.info["pid"], p.info["create_time"])] = t.user + t.system
    return snap


def foreign_cpu_seconds(before: Snapshot, after: Snapshot) -> float:
    """CPU seconds other processes used between two snapshots (new processes count fully;
    processes that exited in between are missed, so this is a lower bound)."""
    return sum(cpu - before.get(key, 0.0) for key, cpu in after.items())


@dataclass
class StepWatch:
    """Wall time of a step and the CPU-seconds other processes took meanwhile."""

    start: float = 0.0
    snap: Snapshot | None = None

    def begin(self) -> None:
        self.snap = foreign_cpu_snapshot()
        self.start = time.monotonic()

    def end(self) -> dict[str, float]:
        wall = time.monotonic() - self.start
        other = foreign_cpu_seconds(self.snap or {}, foreign_cpu_snapshot())
        return {"step_wall_s": round(wall, 1), "other_cpu_s": round(other, 1)}


def proc_stat(path: str) -> tuple[str, list[str]]:
    """A `/proc/<pid>[/task/<tid>]/stat` file: the command name and the fields after it
    (`fields[11]`, `[12]`: user and system ticks; `fields[16]`: nice), read as the kernel
    writes them (the name may hold spaces and parentheses)."""
    with open(path) as stat:
        text = stat.read()
    name, rest = text.split(" (", 1)[1].rsplit(")", 1)
    return name, rest.split()
