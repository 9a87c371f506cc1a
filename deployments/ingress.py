"""The OpenAI HTTP ingress: routes a request to its model's front by `model`.

Errors leave in OpenAI's error JSON through vLLM's own exception handlers: bad input is a 4xx
and never takes the server down.
"""

from __future__ import annotations

import asyncio
import logging
from argparse import Namespace
from http import HTTPStatus
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pdserve.deployments.config import AppConfig
from pdserve.deployments.engine_client import SESSION_KEY
from pdserve.deployments.frontend import ModelFrontend
from ray import serve
from ray.serve.handle import DeploymentHandle
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse, ModelList
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.exception_handling.handlers.http import http_exception_handler
from vllm.entrypoints.serve.exception_handling.handlers.validation import (
    validation_exception_handler,
)
from vllm.entrypoints.serve.utils.api_utils import validate_json_request, with_cancellation

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 10.0

app = FastAPI(title="pdserve")
app.state.args = Namespace(log_error_stack=False)  # read by vLLM's handlers


async def _error_json(request: Request, exc: Exception) -> JSONResponse:
    """Any other error → OpenAI error JSON with vLLM's status mapping (4xx for client errors)."""
    logger.warning("request failed: %s: %s", type(exc).__name__, exc)
    error = create_error_response(exc)
    return JSONResponse(error.model_dump(), status_code=error.error.code)


app.add_exception_handler(HTTPException, http_exception_handler)
app.add_exception_handler(RequestValidationError, validation_exception_handler)
app.add_exception_handler(Exception, _error_json)


def _to_response(result: Any) -> Response:
    """vLLM serving results → HTTP: error JSON, a full response, or an SSE stream."""
    if isinstance(result, ErrorResponse):
        return JSONResponse(result.model_dump(), status_code=result.error.code)
    if hasattr(result, "model_dump"):
        return JSONResponse(result.model_dump())
    return StreamingResponse(result, media_type="text/event-stream")


@serve.deployment
@serve.ingress(app)
class OpenAIIngress:
    def __init__(
        self, app_config: dict[str, Any], pools: dict[str, dict[str, DeploymentHandle]]
    ) -> None:
        config = AppConfig.model_validate(app_config)
        self.frontends = {m.model_id: ModelFrontend(m, pools[m.model_id]) for m in config.models}
        self.by_name = {name: self.frontends[m.model_id] for m in config.models
                        for name in m.names()}
        self.default_model = config.models[0].model_id

    def _tag_session(self, frontend: ModelFrontend, request: Any, raw_request: Request) -> None:
        """Carry the session header to the router as routing data (via `vllm_xargs`)."""
        session = raw_request.headers.get(frontend.model.routing.session_header)
        if session:
            request.vllm_xargs = {**(request.vllm_xargs or {}), SESSION_KEY: session}

    def _frontend(self, model: str | None) -> ModelFrontend | ErrorResponse:
        frontend = self.by_name.get(model or self.default_model)
        if frontend is not None:
            return frontend
        served = ", ".join(sorted(self.by_name))
        return create_error_response(
            f"The model `{model}` does not exist. Served models: {served}.",
            err_type="NotFoundError",
            status_code=HTTPStatus.NOT_FOUND,
            param="model",
        )

    @app.get("/v1/models")
    async def models(self) -> JSONResponse:
        cards = []
        for frontend in self.frontends.values():
            cards.extend((await frontend.registry.show_available_models()).data)
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.post("/v1/completions", dependencies=[Depends(validate_json_request)])
    @with_cancellation
    async def completions(self, request: CompletionRequest, raw_request: Request) -> Response:
        frontend = self._frontend(request.model)
        if isinstance(frontend, ErrorResponse):
            return _to_response(frontend)
        self._tag_session(frontend, request, raw_request)
        return _to_response(await frontend.completions.create_completion(request, raw_request))

    @app.post("/v1/chat/completions", dependencies=[Depends(validate_json_request)])
    @with_cancellation
    async def chat(self, request: ChatCompletionRequest, raw_request: Request) -> Response:
        frontend = self._frontend(request.model)
        if isinstance(frontend, ErrorResponse):
            return _to_response(frontend)
        self._tag_session(frontend, request, raw_request)
        return _to_response(await frontend.chat.create_chat_completion(request, raw_request))

    # -- the same API for Python callers holding a DeploymentHandle (no HTTP) ----------------
    async def create_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI completion request body → the response (or error) body, not streamed."""
        return await self._call(CompletionRequest, body, "completions")

    async def create_chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI chat-completion request body → the response (or error) body, not streamed."""
        return await self._call(ChatCompletionRequest, body, "chat")

    async def _call(self, kind: Any, body: dict[str, Any], api: str) -> dict[str, Any]:
        try:
            request = kind.model_validate({**body, "stream": False})
        except ValueError as exc:
            return create_error_response(exc).model_dump()
        frontend = self._frontend(request.model)
        if isinstance(frontend, ErrorResponse):
            return frontend.model_dump()
        serving = frontend.completions if api == "completions" else frontend.chat
        create = (serving.create_completion if api == "completions"
                  else serving.create_chat_completion)
        result = await create(request, None)
        return result.model_dump()

    def stats(self) -> dict[str, dict[str, int]]:
        """Request, plan and fallback counts per model in this replica (for handles, tests)."""
        return {model_id: dict(f.metrics.tally) for model_id, f in self.frontends.items()}

    def routing(self) -> dict[str, dict[str, Any]]:
        """Each pool's prefix index and event streams as this replica sees them."""
        return {f"{model_id}/{role}": state.snapshot()
                for model_id, f in self.frontends.items() for role, state in f.pools.items()}

    def prefix_hits(self, model_id: str, role: str, token_ids: list[int]) -> dict[str, int]:
        """Leading blocks of `token_ids` each replica of a pool holds, per the index."""
        frontend = self.frontends[model_id]
        return frontend.pools[role].match(frontend.client.hasher(token_ids))

    @app.get("/v1/pools")
    async def pools(self) -> JSONResponse:
        """Replicas each pool of each model routes to now, as this ingress's routers see them
        (follows autoscaling within a second or two); `null` until the pool's router started
        (Ray creates it on the pool's first request)."""
        return JSONResponse({
            f"{model_id}/{role}": {"replicas": state.num_replicas() if state.synced else None}
            for model_id, f in self.frontends.items() for role, state in f.pools.items()
        })

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """200 when one replica of every pool of every model answers its engine health check."""
        checks = {
            f"{model_id}/{role}": handle.health.remote()
            for model_id, frontend in self.frontends.items()
            for role, handle in frontend.handles.items()
        }
        status: dict[str, str] = {}
        for name, response in checks.items():
            try:
                await asyncio.wait_for(response, HEALTH_TIMEOUT_S)
                status[name] = "ok"
            except Exception as exc:  # any failure means unhealthy, and says why
                status[name] = f"unhealthy: {type(exc).__name__}: {exc}"
        healthy = all(v == "ok" for v in status.values())
        return JSONResponse({"status": "ok" if healthy else "unhealthy", "pools": status},
                            status_code=200 if healthy else 503)
