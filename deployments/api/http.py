"""The ingress replica's FastAPI app: the edge guard (keys, scopes, sizes) in front, one router
per concern, OpenAI error JSON, and the catalog of what this replica serves (which the routes
read from `app.state`)."""

from __future__ import annotations

from argparse import Namespace

from fastapi import FastAPI

from pdserve.deployments.api import (
    adapters,
    admin,
    documents,
    embeddings,
    generation,
    messages,
    responses,
    tokenization,
)
from pdserve.deployments.api.catalog import Catalog
from pdserve.deployments.api.errors import install_error_handlers
from pdserve.deployments.api.guard import EdgeGuard
from pdserve.deployments.api.keys import KeyRing
from pdserve.deployments.api.ledger import LedgerLink
from pdserve.deployments.api.quotas import Quotas
from pdserve.deployments.api.request_span import RequestSpan

ROUTERS = (generation.router, responses.router, messages.router, tokenization.router,
           embeddings.router, documents.router, admin.router, adapters.router)


def create_app(catalog: Catalog, keys: KeyRing | None = None,
               app_name: str | None = None,
               default_hosts: frozenset[str] | None = None) -> FastAPI:
    """`keys`: the API keys every route but `/health` needs (none: an open server);
    `app_name`: the Serve app whose ingress replicas share per-key budgets and run-time LoRA
    adapters (none: this replica alone); `default_hosts`: the `Host` names answered when
    `auth.allowed_hosts` names none."""
    app = FastAPI(title="pdserve")
    app.state.args = Namespace(log_error_stack=False)  # read by vLLM's handlers
    app.state.catalog = catalog
    app.state.health = admin.HealthProbe(catalog)
    app.state.adapter_sync = adapters.AdapterSync(catalog, app_name or "local")
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    quotas = Quotas()
    ledger = LedgerLink(quotas, app_name) if app_name else None
    app.add_middleware(EdgeGuard, auth=catalog.auth, limits=catalog.limits, keys=keys,
                       max_concurrent=catalog.max_concurrent, quotas=quotas, ledger=ledger,
                       default_hosts=default_hosts)
    app.add_middleware(RequestSpan)  # outermost: refusals are traced too
    return app
