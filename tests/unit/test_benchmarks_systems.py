"""Pure parts of pdserve.benchmarks.systems: config reading and engine-args -> CLI flags."""

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import yaml

from pdserve.benchmarks import readiness, systems

ENGINE_KWARGS = {
    "dtype": "float32",
    "max_model_len": 1024,
    "max_num_batched_tokens": 2048,
    "block_size": 32,
    "kv_cache_memory_bytes": 268435456,
    "enforce_eager": True,
    "enable_prefix_caching": False,
}


def write_config(path: Path, engine_kwargs: dict) -> Path:
    cfg = {
        "applications": [
            {
                "name": "pdserve",
                "import_path": "pdserve.deployments.app:build_app",
                "args": {
                    "models": [
                        {
                            "model_id": "tiny",
                            "model": "/models/tiny",
                            "engine_kwargs": engine_kwargs,
                        }
                    ]
                },
            }
        ]
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_engine_kwargs_to_cli_scalars_and_booleans() -> None:
    flags = systems.engine_kwargs_to_cli(ENGINE_KWARGS)
    assert flags == [
        "--dtype", "float32",
        "--max-model-len", "1024",
        "--max-num-batched-tokens", "2048",
        "--block-size", "32",
        "--kv-cache-memory-bytes", "268435456",
        "--enforce-eager",
        "--no-enable-prefix-caching",
    ]  # fmt: skip


def test_engine_kwargs_to_cli_dict_list_none() -> None:
    flags = systems.engine_kwargs_to_cli(
        {"compilation_config": {"mode": 0}, "served_model_name": ["a", "b"], "seed": None}
    )
    assert flags == ["--compilation-config", '{"mode": 0}', "--served-model-name", "a", "b"]


def test_engine_flags_parse_back_with_vllm_server_parser() -> None:
    """The flags mean to vLLM's own server parser exactly what the YAML says."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    ns = parser.parse_args(["--model", "x", *systems.engine_kwargs_to_cli(ENGINE_KWARGS)])
    for key, value in ENGINE_KWARGS.items():
        assert getattr(ns, key) == value, key


def test_baseline_drops_pd_only_kwargs() -> None:
    kwargs = {**ENGINE_KWARGS, "kv_transfer_config": {"kv_connector": "NixlConnector"}}
    assert systems.baseline_engine_kwargs(kwargs) == ENGINE_KWARGS


def test_load_model_spec(tmp_path: Path) -> None:
    spec = systems.load_model_spec(write_config(tmp_path / "c.yaml", ENGINE_KWARGS))
    assert (spec.model_id, spec.model, spec.engine_kwargs) == (
        "tiny",
        "/models/tiny",
        ENGINE_KWARGS,
    )


def test_load_model_spec_rejects_other_shapes(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"applications": []}))
    with pytest.raises(ValueError, match="models"):
        systems.load_model_spec(path)


def test_resolve_model_dir_passes_paths_and_hf_ids() -> None:
    assert systems.resolve_model_dir("/models/tiny") == "/models/tiny"
    assert systems.resolve_model_dir("org/name") == "org/name"


def test_vllm_system_command_pins_engine_args() -> None:
    s = systems.vllm_system("/models/tiny", "tiny", ENGINE_KWARGS, port=8123)
    cmd = s.command
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--served-model-name") + 1] == "tiny"
    assert cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[-len(systems.engine_kwargs_to_cli(ENGINE_KWARGS)) :] == (
        systems.engine_kwargs_to_cli(ENGINE_KWARGS)
    )
    assert s.base_url == "http://127.0.0.1:8123" and not s.ray_cluster


def test_pdserve_system_uses_serve_run(tmp_path: Path) -> None:
    config = write_config(tmp_path / "default.yaml", ENGINE_KWARGS)
    s = systems.pdserve_system("pd", config)
    assert s.command[1:] == ["run", str(config)] and s.command[0].endswith("serve")
    assert (s.model_name, s.model_dir, s.ray_cluster) == ("tiny", "/models/tiny", True)


def test_find_preload_libs(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libiomp5.so").touch()
    (tmp_path / "lib" / "libtcmalloc_minimal.so.4").touch()
    found = systems.find_preload_libs(tmp_path)
    assert [Path(f).name for f in found] == ["libtcmalloc_minimal.so.4", "libiomp5.so"]
    assert systems.find_preload_libs(tmp_path / "lib" / "none") == []


def test_system_env_prepends_preload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/x.so")
    s = systems.vllm_system("/m", "m", {})
    assert systems.system_env(s, ["/a.so", "/b.so"])["LD_PRELOAD"] == "/a.so:/b.so:/x.so"


def test_error_hint(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "(Worker pid=1) ERROR 11-23 [utils.py:1] ValueError: No common block size for 16\n"
        "    raise RuntimeError(\n"
        "RuntimeError: Engine core initialization failed.\n"
    )
    assert systems.error_hint(log) == [
        "RuntimeError: Engine core initialization failed.",
        "ValueError: No common block size for 16",
    ]


def test_stop_kills_a_process_that_left_the_systems_group(tmp_path: Path) -> None:
    """As a vLLM engine whose Ray worker was killed: out of the group, still running."""
    import sys
    import time

    from pdserve.benchmarks.process_cpu import process_tree

    escapee = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
               "'import time; time.sleep(120)'], start_new_session=True); time.sleep(120)")
    system = systems.System(name="leaky", command=[sys.executable, "-c", escapee],
                            base_url="http://127.0.0.1:9", model_name="m", model_dir="/m")
    with open(tmp_path / "log", "w") as log:
        proc = systems.start(system, log, preload=[])
        deadline = time.monotonic() + 30
        while len(tree := process_tree(proc.pid)) < 2:
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.1)
        (child,) = tree[1:]
        systems.stop(system, proc, log, grace_s=2.0)
    child.wait(timeout=10)  # raises if it is still running
    assert "outlived its system's stop" in (tmp_path / "log").read_text()



def instance_details(app_status: str, states: list[str]) -> dict:
    """Ray Serve's instance details as its REST API gives them (the fields read here), built
    with Ray's own schema so that a renamed field fails this test."""
    from ray.serve.schema import ServeInstanceDetails

    replicas = [{"replica_id": f"r{i}", "state": s, "actor_name": f"a{i}", "node_id": "n",
                 "node_ip": "127.0.0.1", "node_instance_id": "", "actor_id": f"i{i}",
                 "worker_id": "w", "log_file_path": "/l", "pid": i, "start_time_s": 0.0}
                for i, s in enumerate(states)]
    deployment = {"name": "bench-colocated", "message": "",
                  "status": "HEALTHY" if app_status == "RUNNING" else "UPDATING",
                  "status_trigger": "CONFIG_UPDATE_STARTED", "target_num_replicas": 3,
                  "required_resources": {}, "replicas": replicas,
                  "deployment_config": {"name": "bench-colocated"}}
    app = {"name": "pdserve", "route_prefix": "/", "docs_path": None, "status": app_status,
           "message": "", "last_deployed_time_s": 0.0, "deployed_app_config": None,
           "source": "declarative", "external_scaler_enabled": False,
           "deployments": {"bench-colocated": deployment}}
    details = {"proxies": {}, "applications": {"pdserve": app}}
    ServeInstanceDetails(**details)  # raises if Ray's schema no longer reads it so
    return details


def test_apps_running_needs_every_application_running() -> None:
    """One engine replica up answers completions, but the app is ready only when Serve says
    every application RUNNING (all replicas of every deployment up)."""
    starting = instance_details("DEPLOYING", ["RUNNING", "STARTING", "STARTING"])
    assert not readiness.apps_running(starting)
    assert readiness.apps_running(instance_details("RUNNING", ["RUNNING"] * 3))
    two = instance_details("RUNNING", ["RUNNING"] * 3)
    two["applications"]["other"] = {"status": "DEPLOY_FAILED"}
    assert not readiness.apps_running(two)
    for nothing in (None, {}, {"applications": {}}, {"applications": []}):
        assert not readiness.apps_running(nothing)
    assert readiness.apps_status(starting) == {"pdserve": {
        "status": "DEPLOYING",
        "deployments": {"bench-colocated": "UPDATING: 1 RUNNING, 2 STARTING of 3"}}}


def test_ray_auth_token_where_ray_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert readiness.ray_auth_token({}) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert readiness.ray_auth_token({}) == "home-token"
    assert readiness.ray_auth_token({"RAY_AUTH_TOKEN": "  "}) == "home-token"
    (tmp_path / "elsewhere").write_text("path-token")
    assert readiness.ray_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "elsewhere")}) \
        == "path-token"
    assert readiness.ray_auth_token({"RAY_AUTH_TOKEN": "env-token",
                                   "RAY_AUTH_TOKEN_PATH": str(tmp_path / "elsewhere")}) \
        == "env-token"


@contextlib.contextmanager
def dashboard(token: str, body: bytes) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server standing in for Ray's dashboard: `body` for Serve's details path
    with the right bearer token, 401 without it, 404 elsewhere; yields its URL and the paths
    asked for."""
    import http.server
    import threading

    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the base class's name)
            asked.append(self.path)
            if self.path != "/api/serve/applications/":
                self.send_error(404)
            elif self.headers.get("Authorization") != f"Bearer {token}":
                self.send_error(401, "Unauthorized")
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_serve_details_asks_the_rest_api_with_the_clusters_token() -> None:
    import json

    details = instance_details("RUNNING", ["RUNNING"] * 3)
    with dashboard("t0k", json.dumps(details).encode()) as (url, asked):
        assert readiness.serve_details(url, env={"RAY_AUTH_TOKEN": "t0k"}) == details
        assert asked == ["/api/serve/applications/"]
        with pytest.raises(readiness.ServeStatusUnavailable, match="HTTP 401"):
            readiness.serve_details(url, env={"RAY_AUTH_TOKEN": "wrong"})
    with (dashboard("t0k", b"[]") as (url, _),
          pytest.raises(readiness.ServeStatusUnavailable, match="no object")):
        readiness.serve_details(url, env={"RAY_AUTH_TOKEN": "t0k"})
    with pytest.raises(readiness.ServeStatusUnavailable, match="did not answer"):
        readiness.serve_details(url, timeout=2.0, env={"RAY_AUTH_TOKEN": "t0k"})


class Running:
    """A process that has not exited (what `wait_ready` asks of one)."""

    returncode = None

    def poll(self) -> None:
        return None


def serving(monkeypatch: pytest.MonkeyPatch, polls: Iterable[object]) -> list[str]:
    """Every system answers its model list and a completion at once; Serve's details come
    from `polls` in turn (an exception is raised); returns the order of the checks."""
    order: list[str] = []
    queue = iter(polls)

    def details(timeout: float) -> object:
        order.append("serve")
        item = next(queue)
        if isinstance(item, Exception):
            raise item
        return item

    monkeypatch.setattr(readiness, "models_ready", lambda url: ["m"])
    monkeypatch.setattr(readiness, "completion_ok",
                        lambda url, model, timeout: order.append("completion") or True)
    monkeypatch.setattr(readiness, "serve_details", details)
    monkeypatch.setattr(readiness.time, "sleep", lambda s: None)
    return order


def system(ray_cluster: bool) -> systems.System:
    return systems.System(name="s", command=[], base_url="http://x", model_name="m",
                          model_dir="/m", ray_cluster=ray_cluster)


def test_wait_ready_waits_for_every_serve_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray Serve system is ready when a completion succeeds and then Serve reports every
    replica up (a dashboard that fails for a moment is waited for); a plain server when the
    completion succeeds."""
    order = serving(monkeypatch, [
        instance_details("DEPLOYING", ["RUNNING", "STARTING", "STARTING"]),
        readiness.ServeStatusUnavailable("a moment"), instance_details("RUNNING", ["RUNNING"] * 3)])
    readiness.wait_ready(system(True), Running(), timeout_s=60)
    assert order == ["completion", "serve", "serve", "serve"]
    order.clear()
    readiness.wait_ready(system(False), Running(), timeout_s=60)
    assert order == ["completion"]


def test_wait_ready_says_why_a_serve_system_is_not_ready(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    starting = instance_details("DEPLOYING", ["RUNNING", "STARTING", "STARTING"])
    serving(monkeypatch, itertools.repeat(starting))
    with pytest.raises(TimeoutError, match="1 RUNNING, 2 STARTING of 3"):
        readiness.wait_ready(system(True), Running(), timeout_s=0.2)
    clock = itertools.count(0, 30)  # each look at the clock, 30 s later
    monkeypatch.setattr(readiness.time, "monotonic", lambda: float(next(clock)))
    refused = readiness.ServeStatusUnavailable("HTTP 401 (Unauthorized)")
    serving(monkeypatch, itertools.repeat(refused))
    with pytest.raises(RuntimeError, match="serves, but its Ray Serve status is unknown: "
                       "HTTP 401"):
        readiness.wait_ready(system(True), Running(), timeout_s=9_000)
