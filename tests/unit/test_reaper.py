"""Engine processes die with their replica, however the replica dies (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

REPLICA = """
import subprocess, sys, time
from pdserve.deployments.engine.reaper import guard_engine_processes
engine = subprocess.Popen([sys.executable, "-c", "import setproctitle, time; "
                           "setproctitle.setproctitle('VLLM::EngineCore'); time.sleep(600)"])
time.sleep(0.5)  # named as vLLM names its engine processes
watcher = guard_engine_processes()
print(engine.pid, watcher.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_replicas_engine_process_is_killed_within_seconds() -> None:
    replica = subprocess.Popen([sys.executable, "-c", REPLICA], stdout=subprocess.PIPE, text=True)
    assert replica.stdout is not None
    engine_pid, watcher_pid = map(int, replica.stdout.readline().split())
    try:
        time.sleep(0.5)
        assert not gone(engine_pid) and not gone(watcher_pid)  # nothing happens while it lives
        os.kill(replica.pid, signal.SIGKILL)
        replica.wait()
        deadline = time.monotonic() + 10
        while not (gone(engine_pid) and gone(watcher_pid)):
            assert time.monotonic() < deadline, "the engine process outlived its replica"
            time.sleep(0.1)
    finally:
        for pid in (engine_pid, watcher_pid):
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_process_that_reused_an_engines_pid_is_left_alone() -> None:
    from pdserve.deployments.engine.reaper import watch

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        started = psutil.Process(bystander.pid).create_time()
        # the recorded start time differs: another process now holds the pid
        assert watch(None, [(bystander.pid, started - 5.0)]) == 0
        assert bystander.poll() is None
        assert watch(None, [(bystander.pid, started)], grace_s=5) == 1  # SIGTERM is enough
        bystander.wait(timeout=5)  # gone (psutil reaped it, so its status is lost)
    finally:
        if bystander.poll() is None:
            bystander.kill()


NOT_AN_ENGINE = """
import subprocess, sys
from pdserve.deployments.engine.reaper import guard_engine_processes
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
try:
    print(guard_engine_processes() is None, flush=True)  # e.g. multiprocessing's resource tracker
finally:
    helper.kill()
    helper.wait()
"""


def test_only_vllm_engine_processes_are_guarded() -> None:
    # In a process of its own: this pytest process may hold engines from other tests' fixtures.
    result = subprocess.run([sys.executable, "-c", NOT_AN_ENGINE], capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.strip() == "True"
