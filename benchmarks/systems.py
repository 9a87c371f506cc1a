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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import psutil
import yaml

from pdserve.benchmarks.cpuwatch import proc_stat
from pdserve.benchmarks.process_cpu import process_tree
from pdserve.benchmarks.readiness import wait_ready

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PDSERVE_URL = "http://127.0.0.1:8000"
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
