"""The ingress replica's FastAPI app: one router per concern, OpenAI error JSON, and the
catalog of what this replica serves (which the routes read from `app.state`)."""

from __future__ import annotations

from argparse import Namespace

from fastapi import FastAPI

from pdserve.deployments.api import admin, documents, embeddings, generation
from pdserve.deployments.api.catalog import Catalog
from pdserve.deployments.api.errors import install_error_handlers

ROUTERS = (generation.router, embeddings.router, documents.router, admin.router)


def create_app(catalog: Catalog) -> FastAPI:
    app = FastAPI(title="pdserve")
    app.state.args = Namespace(log_error_stack=False)  # read by vLLM's handlers
    app.state.catalog = catalog
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
