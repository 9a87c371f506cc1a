"""The OpenAI HTTP ingress deployment: builds what it serves (`Catalog`), serves it over its
FastAPI app (built per replica, `http.py`), and offers the same API to Python callers holding
a `DeploymentHandle`, plus in-process views for tests and operators."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from pdserve.deployments.api.catalog import Catalog
from pdserve.deployments.api.exposure import check_exposure, is_loopback, serve_http_host
from pdserve.deployments.api.generation import handle_call
from pdserve.deployments.api.guard import LOOPBACK_NAMES
from pdserve.deployments.api.http import create_app
from pdserve.deployments.api.keys import KeyRing
from pdserve.deployments.api.proxy_body_limit import ceiling_warning
from pdserve.deployments.config.app import AppConfig
from pdserve.deployments.config.pools import PoolName, Role

logger = logging.getLogger(__name__)


@serve.deployment
@serve.ingress()
class OpenAIIngress:
    def __init__(
        self, config: AppConfig, pools: dict[str, dict[Role, DeploymentHandle]],
        retrievers: dict[str, DeploymentHandle] | None = None,
    ) -> None:
        self.keys = KeyRing(config.auth)  # a bad keys source fails the replica at start
        host = serve_http_host()
        check_exposure(config.auth, self.keys.enabled, host)
        # an open server on loopback answers loopback names only (DNS rebinding)
        self.default_hosts = (LOOPBACK_NAMES if not self.keys.enabled and host is not None
                              and is_loopback(host) else None)
        self.catalog = Catalog(config, pools, retrievers or {})
        if (warning := ceiling_warning(config.limits.max_body_bytes)) is not None:
            logger.warning(warning)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Ray Serve calls this after `__init__`: this replica's app, over its catalog."""
        self.http_app = create_app(self.catalog, self.keys,
                                   serve.get_replica_context().app_name, self.default_hosts)
        return self.http_app

    async def check_health(self) -> None:
        """Ray Serve calls this periodically (on the replica's event loop): it starts following
        the app's run-time LoRA adapters."""
        app = getattr(self, "http_app", None)  # (Serve's ingress class owns `app`)
        if app is not None:
            app.state.adapter_sync.start()

    # -- the OpenAI API for Python callers holding a DeploymentHandle (no HTTP) -------------
    async def create_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI completion request body → the response (or error) body, not streamed."""
        return await handle_call(self.catalog, body, "completions")

    async def create_chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI chat-completion request body → the response (or error) body, not streamed."""
        return await handle_call(self.catalog, body, "chat")

    # -- in-process views (tests, operators) ------------------------------------------------
    def stats(self) -> dict[str, dict[str, int]]:
        """Request, plan and fallback counts per model in this replica."""
        return {model_id: dict(f.metrics.tally)
                for model_id, f in self.catalog.frontends.items()}

    def resume_waits(self) -> dict[str, list[float]]:
        """Per model, the recent resumes' seconds from a lost replica to the next output."""
        return {model_id: list(f.metrics.resume_waits)
                for model_id, f in self.catalog.frontends.items()}

    def routing(self) -> dict[str, dict[str, Any]]:
        """Each pool's prefix index and event streams as this replica sees them."""
        return {PoolName(model_id, role).label: state.snapshot()
                for model_id, f in self.catalog.frontends.items()
                for role, state in f.pools.items()}

    def prefix_hits(self, model_id: str, role: Role, token_ids: list[int],
                    cache_salt: str | None = None, adapter: str | None = None
                    ) -> dict[str, int]:
        """Leading blocks of `token_ids` (under `cache_salt`, computed with the LoRA `adapter`
        of that name) each replica of a pool holds, per the index."""
        frontend = self.catalog.frontends[model_id]
        lora = frontend.registry.lora_requests[adapter] if adapter else None
        return frontend.pools[role].match(frontend.client.hasher(token_ids, cache_salt, lora))
