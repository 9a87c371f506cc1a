"""A request's own error is answered where it is raised: OpenAI error JSON, nothing re-raised
to Ray (which would log a traceback in the replica and in the proxy for each bad request)."""

from __future__ import annotations

from argparse import Namespace

from fastapi import FastAPI
from fastapi.testclient import TestClient
from vllm.exceptions import VLLMValidationError

from pdserve.deployments.api.errors import install_error_handlers


def test_request_errors_are_answered_not_reraised() -> None:
    app = FastAPI()
    app.state.args = Namespace(log_error_stack=False)
    install_error_handlers(app)

    @app.get("/bad")
    async def bad() -> None:
        raise VLLMValidationError("temperature must be non-negative", parameter="temperature")

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("internal detail")

    with TestClient(app) as http:  # raises what the app re-raises
        r = http.get("/bad")
        assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    with TestClient(app, raise_server_exceptions=False) as http:
        assert http.get("/broken").status_code == 500  # still JSON, still answered
