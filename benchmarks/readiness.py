"""When a started system is ready for load: it lists its model, answers a completion and, for
a Ray Serve app, every replica of every deployment is up (Ray Serve's REST API)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pdserve.benchmarks.systems import System

#: Where a local Ray cluster's dashboard (and Ray Serve's REST API) listens.
RAY_DASHBOARD_URL = "http://127.0.0.1:8265"


def models_ready(base_url: str, timeout: float = 5.0) -> list[str] | None:
    """Served model ids if `GET {base}/v1/models` answers 200 with models, else None."""
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=timeout) as resp:
            if resp.status != 200:
                return None
            data = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    ids = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)]
    return ids or None


def completion_ok(base_url: str, model: str, timeout: float) -> bool:
    """One 1-token completion succeeds: the engines behind the HTTP front are up."""
    body = json.dumps({"model": model, "prompt": "hello", "max_tokens": 1}).encode()
    req = urllib.request.Request(
        f"{base_url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError, urllib.error.URLError):
        return False


def apps_running(details: dict[str, Any] | None) -> bool:
    """Whether Ray Serve's instance details (its REST API's `GET /api/serve/applications/`) say
    every application is RUNNING: every deployment has had all the replicas it first asked for
    (its `num_replicas`, or its autoscaling start) constructed, and a pdserve engine replica is
    constructed once its engine is up. (An autoscaled deployment scaling later leaves its app
    RUNNING.)"""
    apps = (details or {}).get("applications")
    return bool(apps) and isinstance(apps, dict) and all(
        isinstance(a, dict) and a.get("status") == "RUNNING" for a in apps.values())


def apps_status(details: dict[str, Any]) -> dict[str, Any]:
    """Each application's status and, per deployment, its status and replicas by state (of
    its target): why it is not ready."""
    def replicas(dep: dict[str, Any]) -> str:
        states = Counter(r.get("state") for r in dep.get("replicas") or [])
        shown = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        return f"{dep.get('status')}: {shown or 'no replica'} of {dep.get('target_num_replicas')}"

    return {name: {"status": app.get("status"),
                   "deployments": {d: replicas(dep or {})
                                   for d, dep in (app.get("deployments") or {}).items()}}
            for name, app in (details.get("applications") or {}).items()
            if isinstance(app, dict)}


def ray_auth_token(env: Mapping[str, str] | None = None) -> str | None:
    """The local cluster's token where Ray's token authentication keeps it (`RAY_AUTH_TOKEN`,
    else the file at `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`, which a local cluster
    writes when it starts); None without one (a cluster without authentication)."""
    env = os.environ if env is None else env
    if token := (env.get("RAY_AUTH_TOKEN") or "").strip():
        return token
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class ServeStatusUnavailable(RuntimeError):
    """Ray Serve's REST API did not give the instance details; the message says why."""


def serve_details(dashboard_url: str = RAY_DASHBOARD_URL, timeout: float = 10.0,
                  env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Ray Serve's instance details from its REST API (what `serve status` prints, without
    that command's interpreter start: ~12 s of CPU a call on this box), sent with the local
    cluster's token (Ray 2.60's local clusters turn token authentication on)."""
    token = ray_auth_token(env)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"{dashboard_url}/api/serve/applications/", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            details = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise ServeStatusUnavailable(f"Ray's dashboard at {dashboard_url} answered HTTP "
                                     f"{e.code} ({e.reason})") from None
    except (OSError, ValueError) as e:
        raise ServeStatusUnavailable(f"Ray's dashboard at {dashboard_url} did not answer "
                                     f"({type(e).__name__})") from None
    if not isinstance(details, dict):
        raise ServeStatusUnavailable(f"Ray's dashboard at {dashboard_url} answered no object")
    return details


#: How long a served Ray system's dashboard may fail to give Serve's status before the wait
#: gives up (it starts with the cluster, before any replica: a minute is ample).
DASHBOARD_GRACE_S = 60.0


def wait_ready(system: System, proc: subprocess.Popen, timeout_s: float) -> float:
    """Wait until `/v1/models` lists the model AND a 1-token completion succeeds AND, for a Ray
    Serve system, Serve reports every application RUNNING.

    `/v1/models` alone is not enough for Ray Serve: its ingress answers while the engine
    replicas are still starting. One completion is not enough either: it needs one engine per
    pool on its path, and Ray starts a deployment's replicas side by side, one coming up
    before the others (`plan-validation-cpu-v3`: colocated ×3's last engine came up 11–14 s
    after the completion alone had passed). Returns seconds waited; fails fast if the process
    exits, or if Ray's dashboard gives no status for `DASHBOARD_GRACE_S` once the system
    serves.
    """
    start = time.monotonic()
    served_at: float | None = None
    details: dict[str, Any] | None = None
    while (left := timeout_s - (time.monotonic() - start)) > 0:
        if proc.poll() is not None:
            raise RuntimeError(f"{system.name} exited with code {proc.returncode} before ready")
        if served_at is None:
            ids = models_ready(system.base_url)
            if ids and system.model_name not in ids:
                raise RuntimeError(f"{system.name} serves {ids}, not {system.model_name!r}")
            if ids and completion_ok(system.base_url, system.model_name,
                                     timeout=min(left, 60.0)):
                served_at = time.monotonic()
        if served_at is not None and not system.ray_cluster:
            return time.monotonic() - start
        if served_at is not None:
            try:
                details = serve_details(timeout=min(left, 10.0))
            except ServeStatusUnavailable as e:
                if time.monotonic() - served_at > DASHBOARD_GRACE_S:
                    raise RuntimeError(f"{system.name} serves, but its Ray Serve status is "
                                       f"unknown: {e}") from None
            if apps_running(details):
                return time.monotonic() - start
        time.sleep(2.0)
    why = f"; Ray Serve's applications: {apps_status(details)}" if details else ""
    raise TimeoutError(f"{system.name} not ready after {timeout_s:.0f} s{why}")
