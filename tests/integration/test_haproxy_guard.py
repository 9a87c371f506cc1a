"""Ray Serve's HAProxy outlives the process that started it unless pdserve's launcher runs it.

Real processes: a parent that starts HAProxy (as Ray's HAProxy manager does) is killed with
SIGKILL (as `ray stop --force` or the OOM killer does); HAProxy serves a fixed answer on a
loopback port meanwhile. Through `pdserve-haproxy` it goes with its parent and frees the port;
Ray's binary started directly stays (HAProxy does not notice its parent's death by itself,
which is what the launcher is for). And the session's app is served that way: its HTTP port is
HAProxy's, every other listener of that HAProxy is on loopback, and its admin socket is its
owner's only. (`test_resume_e2e.py` checks the same after a real `ray stop --force`.)
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import port_is_free
from shapes import HTTP_PORT

from pdserve.deployments.api.haproxy_guard import haproxy_binary
from pdserve.deployments.config.ray_serve_env import HAPROXY_BINARY_ENV, haproxy_guard_path

#: starts HAProxy as its child, says the child's pid, then waits to be killed
PARENT = ("import subprocess, sys, time; child = subprocess.Popen(sys.argv[1:]); "
          "print(child.pid, flush=True); time.sleep(600)")
CONFIG = """\
global
    maxconn 16
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend answer
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string ok
listen stats
  bind *:{stats_port}
  stats enable
"""

#: a started HAProxy: its parent, its pid, its port, its stats page's port
Started = tuple[subprocess.Popen, int, int, int]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def listeners(port: int) -> dict[str, int | None]:
    """Address → pid of each TCP socket listening on `port` on this host."""
    return {conn.laddr.ip: conn.pid for conn in psutil.net_connections(kind="tcp")
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port}


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text == "ok"
    except httpx.HTTPError:
        return False


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture
def haproxy_under_parent(tmp_path: Path) -> Iterator[Callable[[str], Started]]:
    """Yields `start(binary)`, which starts `binary` as HAProxy under a parent process and
    waits for it to answer; kills whatever is left at the end."""
    started: list[tuple[subprocess.Popen, int]] = []

    def start(binary: str) -> Started:
        port, stats_port = free_port(), free_port()
        config = tmp_path / f"haproxy-{port}.cfg"
        config.write_text(CONFIG.format(port=port, stats_port=stats_port))
        env = {k: v for k, v in os.environ.items() if k != HAPROXY_BINARY_ENV}
        parent = subprocess.Popen([sys.executable, "-c", PARENT, binary, "-db", "-f",
                                   str(config)], stdout=subprocess.PIPE, text=True, env=env)
        child = int(parent.stdout.readline())
        started.append((parent, child))
        assert wait_for(lambda: answers(port)), "HAProxy never answered"
        return parent, child, port, stats_port

    yield start
    for parent, child in started:
        parent.kill()
        parent.wait()
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_haproxy_run_by_the_launcher_dies_with_its_parent(
    haproxy_under_parent: Callable[[str], Started],
) -> None:
    parent, haproxy, port, stats_port = haproxy_under_parent(str(haproxy_guard_path()))
    # the launcher replaced itself with HAProxy: the parent's child is HAProxy, same pid
    assert Path(f"/proc/{haproxy}/exe").resolve() == Path(haproxy_binary(None)).resolve()
    assert listeners(stats_port) == {"127.0.0.1": haproxy}  # the stats page, moved to loopback
    parent.kill()
    parent.wait()
    assert wait_for(lambda: not alive(haproxy), 10), "HAProxy outlived its parent"
    assert not answers(port) and port_is_free(port)


def test_rays_haproxy_started_directly_outlives_its_parent(
    haproxy_under_parent: Callable[[str], Started],
) -> None:
    parent, haproxy, port, stats_port = haproxy_under_parent(haproxy_binary(None))
    assert listeners(stats_port) == {"0.0.0.0": haproxy}  # as written
    parent.kill()
    parent.wait()
    time.sleep(2)
    assert alive(haproxy) and answers(port), "HAProxy went with its parent by itself"


def test_the_session_app_is_served_by_haproxy_listening_elsewhere_on_loopback_only(
    client: httpx.Client,
) -> None:
    assert client.get("/v1/models").status_code == 200
    (pid,) = set(listeners(HTTP_PORT).values())
    haproxy = psutil.Process(pid)
    assert haproxy.name() == "haproxy", haproxy.cmdline()
    assert haproxy.parent().name().startswith("ray::HAProxyMan"), haproxy.parent().name()
    manager = haproxy.parent()
    served = [conn for child in manager.children() if child.name() == "haproxy"
              for conn in child.net_connections(kind="tcp")
              if conn.status == psutil.CONN_LISTEN and conn.laddr.port != HTTP_PORT]
    assert served and {conn.laddr.ip for conn in served} == {"127.0.0.1"}, served
    args = haproxy.cmdline()
    config = Path(args[args.index("-f") + 1])
    admin = next(line.split()[2] for line in config.read_text().splitlines()
                 if line.split()[:2] == ["stats", "socket"])
    assert stat.S_IMODE(os.stat(admin).st_mode) == 0o600, oct(os.stat(admin).st_mode)
