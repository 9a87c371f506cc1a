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

#: Flag → value, as Ray 2.60 names them (`ray/serve/_private/constants.py`).
RAY_SERVE_FAST_PATH_ENV: dict[str, str] = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}
