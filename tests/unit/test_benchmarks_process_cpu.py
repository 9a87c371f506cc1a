"""Per-role CPU accounting of pdserve.benchmarks.process_cpu."""

import os
import subprocess
import sys
import time

import psutil
import pytest

from pdserve.benchmarks import process_cpu, rounds


@pytest.mark.parametrize(("name", "cmdline", "expected"), [
    ("VLLM::EngineCore", ["VLLM::EngineCore"], "vllm engine core"),
    ("VLLM::Worker_TP0", ["VLLM::Worker_TP0"], "vllm worker"),
    ("ray::ServeRepli", ["ray::ServeReplica:pdserve:ingress"], "replica ingress"),
    ("ray::ServeRepli", ["ray::ServeReplica:rayllm:LLMServer:bench"], "replica LLMServer:bench"),
    ("ray::ProxyActor", ["ray::ProxyActor"], "serve proxy"),
    ("ray::ServeContr", ["ray::ServeController"], "serve controller"),
    ("raylet", ["/x/raylet", "--flag"], "ray system"),
    ("python", ["/v/bin/python", "/v/lib/ray/dashboard/agent.py"], "ray system"),
    ("python", ["/v/bin/python", "-m", "vllm.entrypoints.openai.api_server"], "vllm api server"),
    ("serve", ["/v/bin/python", "/v/bin/serve", "run", "c.yaml"], "serve run driver"),
    ("bash", ["bash"], "bash"),
])
def test_role_names_what_a_process_does(name: str, cmdline: list[str], expected: str) -> None:
    assert process_cpu.role(name, cmdline) == expected


def test_by_role_sums_deltas_per_role_and_counts_new_processes_from_zero() -> None:
    before = {(1, 1.0): ("a", 2.0), (2, 1.0): ("a", 1.0), (3, 1.0): ("b", 5.0)}
    after = {(1, 1.0): ("a", 3.0), (2, 1.0): ("a", 1.5), (3, 1.0): ("b", 5.25),
             (4, 2.0): ("b", 2.0)}
    assert process_cpu.by_role(before, after) == {"b": 2.25, "a": 1.5}
    # a wait snapshot's total falls when a thread ends: that process counts 0, not less
    assert process_cpu.by_role({(1, 1.0): ("a", 2.0)}, {(1, 1.0): ("a", 1.5)}) == {"a": 0.0}


def test_engine_core_cpu_is_read_from_a_steps_roles() -> None:
    roles = {"vllm engine core": 61.5, "replica bench-decode": 7.2, "ray system": 3.9}
    assert process_cpu.engine_core_cpu_s(roles) == 61.5
    assert process_cpu.engine_core_cpu_s({"vllm engine core": 1.0,
                                          "vllm engine core (x)": 2.0}) == 3.0
    assert process_cpu.engine_core_cpu_s(None) is None


def test_snapshot_sees_a_busy_child_and_the_harness() -> None:
    spin = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        proc = psutil.Process(child.pid)
        child_role = process_cpu.role(proc.name(), proc.cmdline())
        before = process_cpu.snapshot(os.getpid())
        time.sleep(1.0)
        used = process_cpu.by_role(before, process_cpu.snapshot(os.getpid()))
    finally:
        child.wait()
    assert used.get("harness (load generator)", 0) < 0.5  # this process slept
    assert used.get(child_role, 0) > 0.3  # the child spun (on a shared 2-core box: loose)


def test_overhead_report_gives_cpu_per_request_by_role() -> None:
    rows = [
        {"round": 1, "system": "x", "load": "c8", "summary": {}, "completed": 10,
         "cpu_s": {"replica ingress": 1.0, "harness (load generator)": 0.5}},
        {"round": 2, "system": "x", "load": "c8", "summary": {}, "completed": 20,
         "cpu_s": {"replica ingress": 4.0, "harness (load generator)": 0.5}},
    ]
    cells = rounds.cpu_per_request(rows)
    assert cells[("x", "c8")] == {"replica ingress": 150.0, "harness (load generator)": 37.5}
    table = "\n".join(rounds.cpu_section(rows))
    assert "| c8 | x | 150.0 | replica ingress 150.0, harness (load generator) 37.5 |" in table


def _two_cores() -> tuple[int, int]:
    """Two cores this process may run on, where the kernel keeps schedstat (skips otherwise:
    the tests below pin spinning processes to them)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat"):
        pytest.skip("needs two cores and schedstat")
    return cores[0], cores[1]


def test_wait_snapshot_sees_two_spinners_on_one_core_wait_for_each_other() -> None:
    """Two processes spinning on one core wait for each other: at every moment one of them
    does (more if anything else runs there), so their waits over 0.8 s add up to about 0.8 s;
    a process that sleeps never waits (what `wait_s` in a benchmark row shows of an engine)."""
    one, _ = _two_cores()
    spin = ("import os, time\nos.sched_setaffinity(0, {%d})\nend = time.time() + 1.6\n"
            "while time.time() < end: pass")
    shared = [subprocess.Popen([sys.executable, "-c", spin % one]) for _ in range(2)]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.6)"])
    children = (*shared, sleeper)
    try:
        time.sleep(0.4)  # started and pinned
        child = psutil.Process(shared[0].pid)
        spinners = process_cpu.role(child.name(), child.cmdline())  # as the tree names them
        before = {p.pid: process_cpu.runqueue_wait_s(p.pid) for p in children}
        tree = process_cpu.wait_snapshot(os.getpid())
        time.sleep(0.8)
        after = {p.pid: process_cpu.runqueue_wait_s(p.pid) for p in children}
        waited = process_cpu.by_role(tree, process_cpu.wait_snapshot(os.getpid()))
    finally:
        for p in children:
            p.wait()
    waits = {pid: after[pid] - before[pid] for pid in after}
    assert sum(waits[p.pid] for p in shared) > 0.6  # ~0.8: one of the two always waits
    assert all(waits[p.pid] > 0.15 for p in shared)  # each its turn
    assert waits[sleeper.pid] < 0.05
    assert waited.get(spinners, 0.0) > 0.6  # the children, named by role, in the tree's sum
    assert process_cpu.runqueue_wait_s(2**22 + 7) == 0.0  # no such process


def test_main_thread_only_leaves_out_the_other_threads_waits() -> None:
    """A process whose main thread and a second thread spin on one core: each waits about
    half the time; the main thread's wait alone is about half the process's."""
    spin = ("import hashlib, os, threading, time\nos.sched_setaffinity(0, {%d})\n"
            "end = time.time() + 1.6\nblock = bytes(1 << 20)\n"
            "def go():  # hashing releases the GIL: both threads stay runnable\n"
            "    while time.time() < end: hashlib.sha256(block).digest()\n"
            "threading.Thread(target=go).start()\ngo()")
    child = subprocess.Popen([sys.executable, "-c", spin % _two_cores()[0]])
    try:
        time.sleep(0.4)
        main0 = process_cpu.runqueue_wait_s(child.pid, main_thread_only=True)
        all0 = process_cpu.runqueue_wait_s(child.pid)
        time.sleep(0.8)
        main = process_cpu.runqueue_wait_s(child.pid, main_thread_only=True) - main0
        both = process_cpu.runqueue_wait_s(child.pid) - all0
    finally:
        child.wait()
    assert main > 0.15 and 1.4 * main < both < 3.0 * main  # its turn; the other thread's too
