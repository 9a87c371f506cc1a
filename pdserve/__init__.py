"""pdserve: disaggregated prefill/decode LLM serving on Ray Serve with vLLM and NIXL.

The public surface for composing graphs in Python (imported lazily, so the CLI stays light):
the pydantic configs and `build_app`, which turns an `AppConfig` into a Ray Serve
`Application` (the OpenAI ingress bound to every model's pools).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AppConfig": "pdserve.deployments.config",
    "ModelConfig": "pdserve.deployments.config",
    "PoolConfig": "pdserve.deployments.config",
    "SLOTargets": "pdserve.deployments.config",
    "RoutingConfig": "pdserve.deployments.config",
    "build_app": "pdserve.deployments.app",
}
__all__ = ["AppConfig", "ModelConfig", "PoolConfig", "RoutingConfig", "SLOTargets", "__version__",
           "build_app"]

if TYPE_CHECKING:
    from pdserve.deployments.app import build_app
    from pdserve.deployments.config import (
        AppConfig,
        ModelConfig,
        PoolConfig,
        RoutingConfig,
        SLOTargets,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pdserve' has no attribute {name!r}")
