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


def test_anthropic_routes_answer_errors_in_anthropics_shape() -> None:
    """Validation errors and raised errors on `/v1/messages…` take Anthropic's error JSON
    (what its SDK reads); every other route keeps OpenAI's."""
    from pydantic import BaseModel

    app = FastAPI()
    app.state.args = Namespace(log_error_stack=False)
    install_error_handlers(app)

    class Body(BaseModel):
        max_tokens: int

    @app.post("/v1/messages")
    async def messages(body: Body) -> dict:
        return {}

    @app.post("/v1/chat/completions")
    async def chat(body: Body) -> dict:
        return {}

    @app.get("/v1/messages/fail")
    async def fail() -> None:
        raise VLLMValidationError("bad model", parameter="model")

    with TestClient(app) as http:
        anthropic = http.post("/v1/messages", json={"max_tokens": "many"})
        assert anthropic.status_code == 400, anthropic.text
        body = anthropic.json()
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
        assert body["error"]["message"]
        openai = http.post("/v1/chat/completions", json={"max_tokens": "many"})
        assert openai.status_code == 400 and set(openai.json()["error"]) >= {"message", "code"}
        raised = http.get("/v1/messages/fail")
        assert raised.status_code == 400
        assert raised.json()["type"] == "error", raised.json()
        assert raised.json()["error"]["message"].startswith("bad model"), raised.json()
