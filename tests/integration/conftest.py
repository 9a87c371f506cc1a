"""Session fixtures: the tiny model, bare-engine references, and one running Serve app.

Engines start once per session (minutes on 2 cores); every test shares them, and after each
test every engine must hold no request and no KV block.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cases import Case, build_cases
from constrained import reference_specs
from lora_cases import LoraCase, lora_cases
from prometheus_client.parser import text_string_to_metric_families
from shapes import (
    APP_NAME,
    COLOCATED_MODEL,
    COLOCATED_REPLICAS,
    ENGINE_KWARGS,
    HTTP_PORT,
    METRICS_PORT,
    PD_MODEL,
    PROXY_MAX_BODY_BYTES,
    app_args,
)

from pdserve.benchmarks.otlp_sink import EXPORTER_ENV, OTLPReceiver
from pdserve.deployments.config.pools import PoolName
from pdserve.deployments.config.ray_serve_env import (
    PROXY_CEILING_ENV,
    ray_start_env,
    tracing_env,
)
from pdserve.models import resolve_model

MAX_TOKENS = 16
ENGINE_DEPLOYMENTS = [f"{PD_MODEL}-prefill", f"{PD_MODEL}-decode", f"{COLOCATED_MODEL}-colocated"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
    # Tests that restart replicas run last, so the others never wait for a cold engine; tests
    # that need their own cluster (they stop the shared app) after those; a test that stops a
    # shared cluster (`ray stop`) after every other, whatever order the files were named in;
    # the multi-node cluster last of all (a `ray stop` would stop its nodes' Ray too).
    items.sort(key=lambda item: (item.get_closest_marker("separate_hosts") is not None,
                                 item.get_closest_marker("own_cluster") is not None,
                                 item.get_closest_marker("disruptive") is not None,
                                 item.get_closest_marker("stops_cluster") is not None))


#: The multi-node test's cluster (`test_multinode_e2e.py`): its own prefix and subnet.
NETNS_PREFIX, NETNS_SUBNET = "pdt", "10.78.0"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Backstop for the multi-node test's own teardown (a timeout may cut it short): no
    namespace, link or process of its cluster outlives the session."""
    if Path(f"/run/netns/{NETNS_PREFIX}-a").exists():
        from pdserve.netns_cluster import NetnsCluster

        NetnsCluster(prefix=NETNS_PREFIX, subnet=NETNS_SUBNET).down()


@pytest.fixture(scope="session")
def model_dir() -> str:
    return resolve_model("pdserve://tiny")


@pytest.fixture(scope="session")
def cases(model_dir: str) -> list[Case]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    (word_id,) = tokenizer.encode(" the", add_special_tokens=False)[:1]
    return build_cases(word_id)


class BareEngineRun:
    """Greedy token ids from a bare vLLM engine in its own process. It starts with the
    session and runs while Ray and the Serve app start (their start-up waits on I/O and
    process spawns, so the bare engine costs the session ~20 s instead of ~50 s)."""

    def __init__(self, model_dir: str, specs: list[dict[str, Any]], tmp: Path) -> None:
        spec = {"model": model_dir, "engine_kwargs": ENGINE_KWARGS, "max_tokens": MAX_TOKENS,
                "cases": specs}
        (tmp / "in.json").write_text(json.dumps(spec))
        self.out = tmp / "out.json"
        script = Path(__file__).parent / "bare_engine.py"
        self.proc = subprocess.Popen([sys.executable, str(script), str(tmp / "in.json"),
                                      str(self.out)], start_new_session=True)

    def result(self, timeout_s: float = 900) -> dict[str, Any]:
        code = self.proc.wait(timeout=timeout_s)
        assert code == 0, f"the bare engine exited with {code}"
        return json.loads(self.out.read_text())


@pytest.fixture(scope="session")
def bare_engine_run(
    model_dir: str, cases: list[Case], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BareEngineRun]:
    specs = [*(c.reference_spec() for c in cases), *reference_specs(),
             *(c.reference_spec() for c in lora_cases())]
    run = BareEngineRun(model_dir, specs, tmp_path_factory.mktemp("bare"))
    yield run
    if run.proc.poll() is None:  # its engine core and worker too
        os.killpg(run.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def bare_reference(bare_engine_run: BareEngineRun, cases: list[Case]) -> list[list[int]]:
    """The bare engine's greedy token ids per case (`cases`)."""
    return bare_engine_run.result()["token_ids"][:len(cases)]


@pytest.fixture(scope="session")
def bare_constrained(bare_engine_run: BareEngineRun, cases: list[Case]) -> dict[str, str]:
    """The bare engine's text per tool-calling and structured-output request
    (`constrained.REFERENCE_SPECS`, by label)."""
    specs = reference_specs()
    first = len(cases)  # the cases come first, then these
    texts = bare_engine_run.result()["texts"][first:first + len(specs)]
    return {spec["label"]: text for spec, text in zip(specs, texts, strict=True)}


@pytest.fixture(scope="session")
def bare_lora(bare_engine_run: BareEngineRun) -> dict[LoraCase, list[int]]:
    """The bare engine's greedy token ids per LoRA case (`lora_cases.py`): the last specs."""
    cases = lora_cases()
    ids = bare_engine_run.result()["token_ids"][-len(cases):]
    return dict(zip(cases, ids, strict=True))


@contextlib.contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """`variables` in this process's environment for the block, then as they were."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def otlp() -> Iterator[OTLPReceiver]:
    """Where every process of the session app sends its spans (OTLP over HTTP)."""
    receiver = OTLPReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def serve_app(
    model_dir: str, bare_engine_run: BareEngineRun, otlp: OTLPReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    import ray
    from ray import serve

    from pdserve.deployments.app import build_app

    # Ray's proxy and controller read Serve's fast-path flags and the proxy's body ceiling from
    # the environment Ray starts in (pdserve's deployments set the flags for themselves), as
    # `make serve` does; the OTLP exporters read where to send spans from it too.
    os.environ.update(ray_start_env())
    os.environ[PROXY_CEILING_ENV] = str(PROXY_MAX_BODY_BYTES)
    # The session app traces every request: Ray Serve's tracing variables (its proxy reads only
    # these), pdserve's OTLP exporter, the receiver as the endpoint. Only Ray's processes get
    # them (they keep the environment Ray started in): the clusters of the own-cluster tests
    # run with tracing off, as a graph does by default.
    tracing = {**tracing_env(otlp.endpoint, sampling_ratio=1.0), **EXPORTER_ENV,
               "OTEL_BSP_SCHEDULE_DELAY": "200"}
    with environment(tracing):
        ray.init(num_cpus=3, _metrics_export_port=METRICS_PORT)  # 5 engines x 0.5 CPU fit
    serve.start(http_options={"host": "127.0.0.1", "port": HTTP_PORT})
    stores = tmp_path_factory.mktemp("vector-stores")
    args = app_args(model_dir, str(stores))
    pd = next(m for m in args["models"] if m["model_id"] == PD_MODEL)  # vLLM's spans join ours
    pd["engine_kwargs"] = {**pd["engine_kwargs"], "otlp_traces_endpoint": otlp.endpoint}
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{HTTP_PORT}"
    wait_for_routers(url)
    yield url
    if ray.is_initialized():  # an own_cluster test may have stopped it already
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def client(serve_app: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_app, timeout=300) as http:
        yield http


def port_is_free(port: int) -> bool:
    """Whether a server could listen on `port` now (as servers do, past TIME_WAIT leftovers)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def leftover_processes(engines_only: bool = False) -> list[str]:
    """vLLM engine processes (and, unless `engines_only`, Ray's) on this machine, found by
    process, not through Ray."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        name, cmdline = proc.info["name"] or "", proc.info["cmdline"] or [""]
        engine = name.startswith("VLLM::")
        ray_process = name in ("raylet", "gcs_server") or (cmdline or [""])[0].startswith("ray::")
        if engine or (ray_process and not engines_only):
            found.append(f"{proc.info['pid']} {name}")
    return found


@contextlib.contextmanager
def own_cluster_app(name: str, config: dict[str, Any], tmp: Path, model_dir: str,
                    model: str, engine: dict[str, Any]) -> Iterator[Path]:
    """The session app stopped, `config` served by `serve run` in a cluster of its own, this
    process connected to it; yields the `serve run` log (the config sits next to it)."""
    import ray
    from ray import serve

    from pdserve.benchmarks import systems

    stop_session_app()
    # Ray started as `make serve` starts it (Serve's fast paths, HAProxy mode), whether or not
    # the session app's fixture exported that into this process's environment first
    system = systems.serve_run_system(name, config, tmp / "config.yaml", model_dir, model,
                                      engine, env=ray_start_env())
    # (a short grace: the app is shut down below before `serve run` gets its Ctrl-C, after
    # which it sometimes waited out all 30 s of the default grace doing nothing)
    with systems.running(system, tmp / "serve.log", preload=[], ready_timeout_s=600,
                         stop_grace_s=5):
        ray.init(address="auto", namespace="serve", log_to_driver=False)
        try:
            yield tmp / "serve.log"
        finally:
            # `serve shutdown` as an operator would; it also drops this process's cached Serve
            # client, which would otherwise point the next module at this cluster's controller.
            # (Not after a test stopped the cluster itself: unconnected, Serve would start one.)
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()


@pytest.fixture(scope="session")
def failover_app(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The failure tests' cluster (`failover_cluster.py`), shared by their modules; yields the
    `serve run` log."""
    import failover_cluster

    with own_cluster_app("failover", failover_cluster.config(model_dir),
                         tmp_path_factory.mktemp("failover"), model_dir, failover_cluster.MODEL,
                         failover_cluster.ENGINE) as log:
        failover_cluster.wait_for_every_replica()
        yield log


def stop_session_app(timeout_s: float = 120.0) -> None:
    """Stop the shared app as an operator would (`serve shutdown`), then its Ray, for a test
    that needs a cluster of its own; every engine process must exit (checked by process).
    Until Ray's workers are gone too, their busy threads would slow the next engine start."""
    import ray
    from ray import serve

    stopped = ray.is_initialized()
    if stopped:
        serve.shutdown()
        ray.shutdown()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and leftover_processes():
        time.sleep(1.0)
    if stopped:
        assert not leftover_processes(engines_only=True), (
            f"vLLM engines outlived `serve shutdown`: {leftover_processes(engines_only=True)}")


def busiest_processes(top: int = 8, sample_s: float = 1.0) -> str:
    """Who holds the CPUs now (CPU %, nice, allowed cores, command): attached to a timeout
    where a new engine is slow to start, because Ray's workers run at nice 15 and a busy
    process at nice 0 can slow an engine's start by an order of magnitude."""
    import psutil

    procs = list(psutil.process_iter(["pid", "nice", "cmdline", "name"]))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
    time.sleep(sample_s)
    rows = []
    for proc in procs:
        try:
            command = " ".join(proc.info["cmdline"] or [proc.info["name"]])
            rows.append((proc.cpu_percent(None), proc.info["pid"], proc.info["nice"],
                         proc.cpu_affinity(), command[:100].replace("\n", " ")))
        except psutil.Error:
            continue
    rows.sort(reverse=True)
    return "\n".join(f"{cpu:5.1f}% pid={pid} nice={nice} cores={cores} {cmd}"
                     for cpu, pid, nice, cores, cmd in rows[:top])


def wait_for_routers(url: str, timeout_s: float = 120.0) -> None:
    """Route one request per model, then wait until the ingress's routers follow every
    replica's KV-event stream (engines report their endpoints every couple of seconds).
    A handle creates its router on its first call, so the warm-up prompt is long enough for
    the PD plan to use the prefill pool."""
    with httpx.Client(base_url=url, timeout=300) as http:
        for model in (PD_MODEL, COLOCATED_MODEL):
            body = {"model": model, "prompt": " ".join(["warm up"] * 40), "max_tokens": 1}
            assert http.post("/v1/completions", json=body).status_code == 200
    want = {f"{PD_MODEL}/prefill": 1, f"{PD_MODEL}/decode": 1,
            f"{COLOCATED_MODEL}/colocated": COLOCATED_REPLICAS}
    deadline = time.monotonic() + timeout_s
    while True:
        pools = routing_state()
        if all(len(pools[name]["streams"]) == n for name, n in want.items()):
            return
        assert time.monotonic() < deadline, f"routers never saw every engine: {pools}"
        time.sleep(0.5)


def deployment(name: str) -> Any:
    from ray import serve

    return serve.get_deployment_handle(name, APP_NAME)


def routing_state() -> dict[str, dict[str, Any]]:
    """The ingress's view of every pool: replicas, index sizes, event-stream counters."""
    from ray import serve

    return serve.get_app_handle(APP_NAME).routing.remote().result()


def replicas_of(name: str) -> list[str]:
    """Replica ids of a pool deployment (`{model}-{role}`), as the ingress routes to them."""
    pool = PoolName.parse(name)
    assert pool is not None, f"{name} is not a pool deployment"
    return list(routing_state()[pool.label]["replicas"])


def engine_metrics(
    name: str, replica: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """vLLM's own metrics of one replica of a pool (the only one if `replica` is None)."""
    if replica is None:
        (replica,) = replicas_of(name)
    text = deployment(name).vllm_metrics.remote(replica=replica).result()
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def metric_sum(name: str, sample: str, replica: str | None = None, **labels: str) -> float:
    """Sum of a vLLM metric's samples on one engine of a pool, filtered by labels."""
    return sum(
        value
        for (sample_name, sample_labels), value in engine_metrics(name, replica).items()
        if sample_name == sample and labels.items() <= dict(sample_labels).items()
    )


def ingress_stats() -> dict[str, dict[str, int]]:
    from ray import serve

    return serve.get_app_handle(APP_NAME).stats.remote().result()


def wait_drained(timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """Poll every engine until none holds a request or a KV block; return the last state."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = {
            f"{name}/{replica}": deployment(name).drained.remote(replica=replica).result()
            for name in ENGINE_DEPLOYMENTS for replica in replicas_of(name)
        }
        clean = all(
            s["unfinished_requests"] == 0 and not s["engine_core_has_work"]
            and s["all_kv_blocks_free"]
            for s in states.values()
        )
        if clean or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def wait_routers_idle(timeout_s: float = 30.0) -> dict[str, dict[str, int]]:
    """Poll the ingress until no pool counts a request in flight; return what is still
    counted ({pool: {replica: requests}})."""
    deadline = time.monotonic() + timeout_s
    while True:
        booked = {pool: {r: n for r, n in state["in_flight"].items() if n}
                  for pool, state in routing_state().items()}
        booked = {pool: counts for pool, counts in booked.items() if counts}
        if not booked or time.monotonic() > deadline:
            return booked
        time.sleep(0.5)


@pytest.fixture(autouse=True)
def nothing_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the app: no running request and no held KV on any engine."""
    yield
    if "serve_app" not in request.fixturenames:
        return
    states = wait_drained()
    for name, state in states.items():
        assert state == {
            "unfinished_requests": 0, "engine_core_has_work": False, "all_kv_blocks_free": True
        }, f"{name} leaked work: {state}"
    # ...and every router's in-flight bookkeeping emptied: a request left counted would skew
    # routing and, on the prefill pool, the PD plan (it once sent every prompt to decode).
    booked = wait_routers_idle()
    assert not booked, f"routers still count requests in flight: {booked}"
