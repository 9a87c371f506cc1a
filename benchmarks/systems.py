"""Serving systems under test: how to start each one, wait for it, and stop it cleanly.

Every system is driven only through its OpenAI HTTP API, so the harness treats them as
black boxes: a command, a base URL and the served model name. The machine cannot host
two systems at once, so a system is started, used, and fully stopped (including its Ray
cluster) before the next one starts.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import psutil
import yaml

from pdserve.benchmarks.cpuwatch import proc_stat
from pdserve.benchmarks.process_cpu import process_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PDSERVE_URL = "http://127.0.0.1:8000"
#: Where a local Ray cluster's dashboard (and Ray Serve's REST API) listens.
RAY_DASHBOARD_URL = "http://127.0.0.1:8265"
VLLM_PORT = 8100

# Engine settings that only make sense inside the PD deployment; the plain vLLM
# baseline has no KV connector, so these are not passed to it.
PD_ONLY_ENGINE_KWARGS = frozenset({"kv_transfer_config", "kv_events_config"})


@dataclass
class ModelSpec:
    """The first model of a pdserve Serve config: served name, weights, engine settings."""

    model_id: str
    model: str
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class System:
    """One server to benchmark: `ray_cluster` says whether stopping needs `ray stop`."""

    name: str
    command: list[str]
    base_url: str
    model_name: str
    model_dir: str
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    config_path: str | None = None
    ray_cluster: bool = False
    env: dict[str, str] = field(default_factory=dict)
    #: A session (kernel autogroup) of its own instead of the harness's (see `start`).
    own_session: bool = False


def load_model_spec(config_path: str | Path) -> ModelSpec:
    """Read `applications[0].args.models[0]` from a pdserve Serve YAML."""
    with open(config_path) as f:
        cfg = yaml.safe_load(f)
    try:
        model = cfg["applications"][0]["args"]["models"][0]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{config_path}: no applications[0].args.models[0]") from e
    return ModelSpec(
        model_id=str(model["model_id"]),
        model=str(model["model"]),
        engine_kwargs=dict(model.get("engine_kwargs") or {}),
    )


def resolve_model_dir(model: str) -> str:
    """Turn a config's `model` (pdserve://..., a path, or an HF id) into what vLLM loads."""
    if model.startswith("pdserve://"):
        from pdserve.models import resolve_model

        return str(resolve_model(model))
    return model


def engine_kwargs_to_cli(kwargs: dict[str, Any]) -> list[str]:
    """Convert vLLM engine-argument names/values to `vllm serve` CLI flags.

    Booleans become `--flag` / `--no-flag` (vLLM uses BooleanOptionalAction), dicts
    become JSON, lists become repeated values after one flag, None is left out.
    """
    args: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            args += [flag, json.dumps(value, sort_keys=True)]
        elif isinstance(value, list | tuple):
            args += [flag, *(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return args


def baseline_engine_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The PD engine settings minus those that only exist for PD (KV connector etc.)."""
    return {k: v for k, v in kwargs.items() if k not in PD_ONLY_ENGINE_KWARGS}


SLO_POLICY = "pdserve.deployments.autoscaling.policy:SLOAutoscalingPolicy"


def serve_config_doc(args: dict[str, Any], autoscaling_policy: str | None = None
                     ) -> dict[str, Any]:
    """A `serve run` config: one pdserve app on `PDSERVE_URL` with these `args` (optionally
    under an application-level autoscaling policy)."""
    app: dict[str, Any] = {"name": "pdserve", "route_prefix": "/",
                           "import_path": "pdserve.deployments.app:build_app", "args": args}
    if autoscaling_policy:
        app["autoscaling_policy"] = {"policy_function": autoscaling_policy}
    return {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": 8000},
            "applications": [app]}


def pdserve_system(name: str, config_path: str | Path, model_dir: str | None = None) -> System:
    """A pdserve app started with `serve run <config>` from the repo root."""
    spec = load_model_spec(config_path)
    return System(
        name=name,
        command=[str(VENV_BIN / "serve"), "run", str(config_path)],
        base_url=PDSERVE_URL,
        model_name=spec.model_id,
        model_dir=model_dir or resolve_model_dir(spec.model),
        engine_kwargs=spec.engine_kwargs,
        config_path=str(config_path),
        ray_cluster=True,
        # Ray runs its workers (proxy, controller; pdserve's own deployments set it anyway) at
        # nice 15 by default; the compared systems must all run at the same priority.
        env={"RAY_worker_niceness": "0"},
    )


def serve_run_system(name: str, config: dict[str, Any], config_path: Path, model_dir: str,
                     model_name: str, engine_kwargs: dict[str, Any],
                     env: dict[str, str] | None = None) -> System:
    """A Ray Serve app (any `serve run` config) written to `config_path`, started with
    `serve run`, every Ray worker at normal priority."""
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return System(name=name, command=[str(VENV_BIN / "serve"), "run", str(config_path)],
                  base_url=PDSERVE_URL, model_name=model_name, model_dir=model_dir,
                  engine_kwargs=engine_kwargs, config_path=str(config_path), ray_cluster=True,
                  env={"RAY_worker_niceness": "0", **(env or {})})


def vllm_system(
    model_dir: str, model_name: str, engine_kwargs: dict[str, Any], port: int = VLLM_PORT
) -> System:
    """Plain vLLM OpenAI server with every engine argument pinned explicitly."""
    kwargs = baseline_engine_kwargs(engine_kwargs)
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_dir, "--served-model-name", model_name,
        "--host", "127.0.0.1", "--port", str(port),
        *engine_kwargs_to_cli(kwargs),
    ]  # fmt: skip
    return System(
        name="vllm",
        command=command,
        base_url=f"http://127.0.0.1:{port}",
        model_name=model_name,
        model_dir=model_dir,
        engine_kwargs=kwargs,
    )


def find_preload_libs(venv_root: Path | None = None) -> list[str]:
    """tcmalloc and Intel OpenMP from the venv, which vLLM's CPU worker asks for."""
    root = venv_root or Path(sys.prefix)
    found: list[str] = []
    for group in (("libtcmalloc_minimal.so*", "libtcmalloc.so*"), ("libiomp5.so",)):
        for pattern in group:
            hits = sorted(glob.glob(str(root / "**" / pattern), recursive=True))
            if hits:
                found.append(hits[0])
                break
    return found


def system_env(system: System, preload: list[str]) -> dict[str, str]:
    """Environment for a started system: ours, plus LD_PRELOAD and per-system extras."""
    env = dict(os.environ)
    if preload:
        env["LD_PRELOAD"] = ":".join([*preload, *filter(None, [env.get("LD_PRELOAD")])])
    env.update(system.env)
    return env


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


def port_in_use(base_url: str) -> bool:
    """True if something already answers on the system's port (not ours: refuse to start)."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(base_url)
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((u.hostname or "127.0.0.1", u.port or 80)) == 0


def foreign_ray_processes() -> list[str]:
    """Running `serve run` drivers or Ray daemons (someone else's cluster we must not kill)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if p.info.get("name") in ("raylet", "gcs_server") or " serve run " in f" {cmd} ":
            found.append(f"{p.info['pid']}: {cmd[:120]}")
    return found


def wait_for_no_ray(timeout_s: float, poll_s: float = 30.0) -> None:
    """Wait for a colleague's Ray cluster to finish; raise if it is still there after timeout."""
    deadline = time.monotonic() + timeout_s
    while procs := foreign_ray_processes():
        if time.monotonic() > deadline:
            running_now = "\n".join(procs)
            raise RuntimeError(f"another Ray cluster / serve run is still running:\n{running_now}")
        print(f"waiting for another Ray cluster to finish ({len(procs)} processes)", flush=True)
        time.sleep(poll_s)


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


def start(system: System, log: TextIO, preload: list[str]) -> subprocess.Popen:
    """Start the system in its own process group (so stopping reaches all its children) but
    in the harness's session. Where the kernel groups CPU time by session (autogroup, on by
    default on Ubuntu and on this box), a system in a session of its own gets half the CPU as
    a group and the load generator the other half per CPU: with vLLM's spinning threads in the
    system's group the generator then waited up to ~0.5 s for a CPU while tokens piled up
    (measured: 2026-12-02), and streams looked clumped. One session puts the generator and
    every process of the system under plain per-process fairness, as on a box without
    autogroup."""
    if port_in_use(system.base_url):
        raise RuntimeError(f"{system.base_url} is already in use; not starting {system.name}")
    log.write(f"$ {' '.join(system.command)}\n")
    log.flush()
    return subprocess.Popen(
        system.command,
        cwd=REPO_ROOT,
        env=system_env(system, preload),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=system.own_session,
        process_group=None if system.own_session else 0,
    )


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop(system: System, proc: subprocess.Popen, log: TextIO, grace_s: float = 30.0) -> None:
    """SIGINT (graceful), then SIGTERM, then SIGKILL the group; `ray stop --force` for Ray;
    then SIGKILL whatever of the system's process tree (taken before stopping) is still alive.

    Ray's workers and the vLLM processes they start are not in the group, and `ray stop`
    does not reach a vLLM engine whose Ray worker it killed: such orphans (one spun a core at
    94 % for 25 minutes, 2026-12-02) would load every system measured after them."""
    tree = process_tree(proc.pid)
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        _signal_group(proc, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
    _signal_group(proc, signal.SIGKILL)  # children that outlived the leader
    if system.ray_cluster:
        subprocess.run(
            [str(VENV_BIN / "ray"), "stop", "--force"],
            stdout=log, stderr=subprocess.STDOUT, check=False, timeout=120,
        )  # fmt: skip
    kill_survivors(tree, log)


def kill_survivors(tree: list[psutil.Process], log: TextIO, wait_s: float = 5.0) -> None:
    """SIGKILL the processes of `tree` still alive `wait_s` after their system stopped."""
    _, alive = psutil.wait_procs([p for p in tree if p.is_running()], timeout=wait_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            log.write(f"killing {p.pid} ({p.name()}): it outlived its system's stop\n")
            p.kill()


class Started(NamedTuple):
    startup_s: float
    pid: int  # the started command's process: the system's processes are its descendants


def priorities(pid: int) -> dict[str, list[int]]:
    """Distinct nice values (read from /proc) of a process tree, by process name."""
    found: dict[str, set[int]] = {}
    for proc in process_tree(pid):
        try:
            name, fields = proc_stat(f"/proc/{proc.pid}/stat")
            found.setdefault(name, set()).add(int(fields[16]))
        except (OSError, IndexError, ValueError):
            continue
    return {name: sorted(values) for name, values in sorted(found.items())}


@contextlib.contextmanager
def running(
    system: System,
    log_path: Path,
    preload: list[str],
    ready_timeout_s: float = 600.0,
    stop_grace_s: float = 30.0,
) -> Iterator[Started]:
    """Start `system`, yield its start-up seconds and pid once ready, and always stop it
    (SIGINT first, then `stop_grace_s` to exit gracefully)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        proc = start(system, log, preload)
        try:
            try:
                startup_s = wait_ready(system, proc, ready_timeout_s)
            except (RuntimeError, TimeoutError) as e:
                raise RuntimeError(f"{e}; last errors in {log_path}: {error_hint(log_path)}") from e
            yield Started(startup_s, proc.pid)
        finally:
            stop(system, proc, log, grace_s=stop_grace_s)


def error_hint(log_path: Path, n: int = 3) -> list[str]:
    """The last distinct `SomeError: message` lines of a server log: why it did not come up."""
    pattern = re.compile(r"^\w+(Error|Exception): .+")
    lines = (
        ln.split("] ", 1)[-1].strip() for ln in log_path.read_text(errors="replace").splitlines()
    )
    hits = [ln for ln in lines if pattern.match(ln)]
    return list(dict.fromkeys(reversed(hits)))[:n]
