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
from pdserve.deployments.config import AppConfig, ModelConfig
from pdserve.deployments.engine_client import SESSION_KEY
from pdserve.deployments.frontend import ModelFrontend
from pdserve.deployments.pipelines.rag import DEBUG_HEADER, PipelineFrontend, remote_cause
from pdserve.deployments.pipelines.stores import StoreUnavailable
from pydantic import BaseModel, Field
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.pooling.embed.protocol import (
    EmbeddingCompletionRequest,
    EmbeddingResponse,
    EmbeddingResponseData,
)
from vllm.entrypoints.pooling.utils import get_pooling_output_encoder, get_pooling_usage
from vllm.entrypoints.serve.engine.protocol import ErrorResponse, ModelCard, ModelList
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
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(result, media_type="text/event-stream")


def _not_found(what: str, name: str | None, served: list[str], param: str) -> ErrorResponse:
    return create_error_response(
        f"The {what} `{name}` does not exist. Served: {', '.join(sorted(served))}.",
        err_type="NotFoundError", status_code=HTTPStatus.NOT_FOUND, param=param)


class Document(BaseModel):
    """A document to (re)index: its chunks replace any the same `id` had before."""

    id: str = Field(..., min_length=1, description="Document id (e.g. its path).")
    text: str = Field(..., description="Plain text or Markdown.")


class DocumentsRequest(BaseModel):
    documents: list[Document] = Field(..., min_length=1, max_length=10_000)


def _embedding_inputs(request: EmbeddingCompletionRequest) -> list[str] | list[list[int]]:
    """OpenAI's `input`: a string, strings, token ids, or lists of token ids → a list."""
    items = request.input
    if isinstance(items, str):
        return [items]
    if items and all(isinstance(i, int) for i in items):
        return [list(items)]  # type: ignore[arg-type]
    return list(items)  # type: ignore[arg-type]


@serve.deployment
@serve.ingress(app)
class OpenAIIngress:
    def __init__(
        self, app_config: dict[str, Any], pools: dict[str, dict[str, DeploymentHandle]],
        retrievers: dict[str, DeploymentHandle] | None = None,
    ) -> None:
        config = AppConfig.model_validate(app_config)
        generating = [m for m in config.models if m.generates()]
        self.frontends = {m.model_id: ModelFrontend(m, pools[m.model_id]) for m in generating}
        self.by_name: dict[str, ModelFrontend | PipelineFrontend] = {
            name: self.frontends[m.model_id] for m in generating for name in m.names()}
        self.embedders: dict[str, tuple[ModelConfig, DeploymentHandle]] = {
            name: (m, pools[m.model_id]["embed"])
            for m in config.models if m.mode == "embed" for name in m.names()}
        self.pipelines = {
            p.name: PipelineFrontend(p, self.frontends[p.llm], (retrievers or {})[p.name])
            for p in config.pipelines}
        self.by_name.update(self.pipelines)
        self.default_model = (generating or config.models)[0].model_id

    def _tag_session(self, frontend: ModelFrontend, request: Any, raw_request: Request) -> None:
        """Carry the session header to the router as routing data (via `vllm_xargs`)."""
        session = raw_request.headers.get(frontend.model.routing.session_header)
        if session:
            request.vllm_xargs = {**(request.vllm_xargs or {}), SESSION_KEY: session}

    def _frontend(self, model: str | None) -> ModelFrontend | PipelineFrontend | ErrorResponse:
        frontend = self.by_name.get(model or self.default_model)
        if frontend is not None:
            return frontend
        if model in self.embedders:
            return create_error_response(
                f"The model `{model}` is an embedding model: use /v1/embeddings.", param="model")
        return _not_found("model", model, [*self.by_name, *self.embedders], "model")

    @app.get("/v1/models")
    async def models(self) -> JSONResponse:
        cards = []
        for frontend in self.frontends.values():
            cards.extend((await frontend.registry.show_available_models()).data)
        cards += [ModelCard(id=name, root=m.model) for name, (m, _) in self.embedders.items()]
        cards += [ModelCard(id=name, root=f"pipeline:{p.config.llm}", owned_by="pdserve")
                  for name, p in self.pipelines.items()]
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.post("/v1/embeddings", dependencies=[Depends(validate_json_request)])
    async def embeddings(self, request: EmbeddingCompletionRequest) -> Response:
        """OpenAI embeddings from the model's embedding pool (vLLM's pooling encoders)."""
        if request.model not in self.embedders:
            if request.model in self.by_name:
                return _to_response(create_error_response(
                    f"The model `{request.model}` does not serve embeddings; embedding models: "
                    f"{', '.join(sorted(self.embedders))}.", param="model"))
            return _to_response(_not_found("embedding model", request.model,
                                           list(self.embedders), "model"))
        if request.encoding_format not in ("float", "base64"):
            return _to_response(create_error_response(
                "encoding_format must be `float` or `base64`", param="encoding_format"))
        inputs = _embedding_inputs(request)
        if not inputs or any(len(i) == 0 for i in inputs):
            return _to_response(create_error_response("input must not be empty", param="input"))
        _, handle = self.embedders[request.model]
        try:
            outputs = await handle.embed.remote(inputs, request.to_pooling_params(),
                                                request.truncate_prompt_tokens)
        except RayTaskError as exc:  # the engine's own error (e.g. input too long), unwrapped
            return _to_response(create_error_response(exc.cause))
        encode = get_pooling_output_encoder(request.encoding_format, request.embed_dtype,
                                            request.endianness)
        response = EmbeddingResponse(
            model=request.model, usage=get_pooling_usage(outputs),
            data=[EmbeddingResponseData(index=i, embedding=encode(o))
                  for i, o in enumerate(outputs)])
        return JSONResponse(response.model_dump())

    def _pipeline(self, name: str) -> PipelineFrontend | ErrorResponse:
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            return _not_found("pipeline", name, list(self.pipelines), "name")
        return pipeline

    @app.post("/v1/pipelines/{name}/documents")
    async def upsert_documents(self, name: str, request: DocumentsRequest) -> Response:
        """Index documents online (chunk, embed, store); the next query sees them."""
        pipeline = self._pipeline(name)
        if isinstance(pipeline, ErrorResponse):
            return _to_response(pipeline)
        documents = [d.model_dump() for d in request.documents]
        return await self._store_call(pipeline, lambda: pipeline.retriever.upsert.remote(
            documents))

    @app.delete("/v1/pipelines/{name}/documents/{document:path}")
    async def delete_document(self, name: str, document: str) -> Response:
        pipeline = self._pipeline(name)
        if isinstance(pipeline, ErrorResponse):
            return _to_response(pipeline)
        return await self._store_call(pipeline, lambda: pipeline.retriever.delete.remote(
            document), key="deleted_chunks")

    @app.get("/v1/pipelines/{name}")
    async def pipeline_info(self, name: str) -> Response:
        pipeline = self._pipeline(name)
        if isinstance(pipeline, ErrorResponse):
            return _to_response(pipeline)
        return await self._store_call(pipeline, lambda: pipeline.retriever.count.remote(),
                                      key="chunks")

    async def _store_call(self, pipeline: PipelineFrontend, call: Any,
                          key: str | None = None) -> Response:
        try:
            result = await call()
        except StoreUnavailable as exc:
            return _to_response(create_error_response(
                f"pipeline {pipeline.config.name!r}: {remote_cause(exc)}",
                err_type="ServiceUnavailableError", status_code=HTTPStatus.SERVICE_UNAVAILABLE))
        body = {key: result} if key else dict(result)
        return JSONResponse({"object": "pipeline", "pipeline": pipeline.config.name,
                             "store": pipeline.config.store.kind, **body})

    @app.post("/v1/completions", dependencies=[Depends(validate_json_request)])
    @with_cancellation
    async def completions(self, request: CompletionRequest, raw_request: Request) -> Response:
        frontend = self._frontend(request.model)
        if isinstance(frontend, ErrorResponse):
            return _to_response(frontend)
        if isinstance(frontend, PipelineFrontend):
            return _to_response(create_error_response(
                f"pipeline `{request.model}` answers chat completions (/v1/chat/completions)",
                param="model"))
        self._tag_session(frontend, request, raw_request)
        return _to_response(await frontend.completions.create_completion(request, raw_request))

    @app.post("/v1/chat/completions", dependencies=[Depends(validate_json_request)])
    @with_cancellation
    async def chat(self, request: ChatCompletionRequest, raw_request: Request) -> Response:
        frontend = self._frontend(request.model)
        if isinstance(frontend, ErrorResponse):
            return _to_response(frontend)
        if isinstance(frontend, PipelineFrontend):
            self._tag_session(frontend.llm, request, raw_request)
            debug = raw_request.headers.get(DEBUG_HEADER, "").lower() in ("1", "true", "yes")
            return _to_response(await frontend.chat(request, raw_request, debug))
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
        if isinstance(frontend, PipelineFrontend):
            if api != "chat":
                return create_error_response("pipelines answer chat completions").model_dump()
            result = await frontend.chat(request, None)
            return result if isinstance(result, dict) else result.model_dump()
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
        checks.update({f"{m.model_id}/embed": handle.health.remote()
                       for m, handle in self.embedders.values()})
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
