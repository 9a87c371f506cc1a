"""The ingress replica's FastAPI app: the edge guard (keys, scopes, sizes) in front, one router
per concern, OpenAI error JSON, and the catalog of what this replica serves (which the routes
read from `app.state`)."""

from __future__ import annotations

from argparse import Namespace

from fastapi import FastAPI

from pdserve.deployments.api import admin, documents, embeddings, generation
from pdserve.deployments.api.catalog import Catalog
from pdserve.deployments.api.errors import install_error_handlers
from pdserve.deployments.api.guard import EdgeGuard
from pdserve.deployments.api.keys import KeyRing

ROUTERS = (generation.router, embeddings.router, documents.router, admin.router)


def create_app(catalog: Catalog, keys: KeyRing | None = None) -> FastAPI:
    """`keys`: the API keys every route but `/health` needs (none: an open server)."""
    app = FastAPI(title="pdserve")
    app.state.args = Namespace(log_error_stack=False)  # read by vLLM's handlers
    app.state.catalog = catalog
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(EdgeGuard, auth=catalog.auth, limits=catalog.limits, keys=keys,
                       max_concurrent=catalog.max_concurrent)
    return app
