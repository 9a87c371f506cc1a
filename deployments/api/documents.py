"""A pipeline's documents online: upsert (chunk, embed, store; the next query sees them),
delete, and the chunk count; a store that is down answers 503 and the server stays up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.utils.api_utils import validate_json_request

from pdserve.deployments.api.catalog import catalog_of
from pdserve.deployments.api.errors import to_response
from pdserve.deployments.api.guard import caller_of
from pdserve.deployments.config.security import LimitsConfig
from pdserve.deployments.pipelines.chunking import Document
from pdserve.deployments.pipelines.rag import PipelineFrontend, remote_cause
from pdserve.deployments.pipelines.stores import StoreUnavailable

router = APIRouter()


class DocumentBody(BaseModel):
    """A document to (re)index: its chunks replace any the same `id` had before."""

    id: str = Field(..., min_length=1, description="Document id (e.g. its path).")
    text: str = Field(..., description="Plain text or Markdown.")


class DocumentsRequest(BaseModel):
    documents: list[DocumentBody] = Field(..., min_length=1)


def over_limits(request: DocumentsRequest, limits: LimitsConfig) -> ErrorResponse | None:
    """413 for an upsert over `limits:` (documents per call, bytes per document)."""
    if len(request.documents) > limits.max_documents_per_upsert:
        return create_error_response(
            f"documents: at most {limits.max_documents_per_upsert} per call on this server",
            err_type="RequestEntityTooLarge", status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            param="documents")
    for i, document in enumerate(request.documents):
        if len(document.text.encode()) > limits.max_document_bytes:
            return create_error_response(
                f"documents[{i}].text: larger than {limits.max_document_bytes} bytes",
                err_type="RequestEntityTooLarge",
                status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE, param="documents")
    return None


async def _store_call(pipeline: PipelineFrontend, call: Callable[[], Awaitable[Any]],
                      key: str | None = None) -> Response:
    try:
        result = await call()
    except StoreUnavailable as exc:
        return to_response(create_error_response(
            f"pipeline {pipeline.config.name!r}: {remote_cause(exc)}",
            err_type="ServiceUnavailableError", status_code=HTTPStatus.SERVICE_UNAVAILABLE))
    body = {key: result} if key else dict(result)
    return JSONResponse({"object": "pipeline", "pipeline": pipeline.config.name,
                         "store": pipeline.config.store.kind, **body})


@router.post("/v1/pipelines/{name}/documents", dependencies=[Depends(validate_json_request)])
async def upsert_documents(name: str, request: DocumentsRequest, raw_request: Request
                           ) -> Response:
    """Index documents online (chunk, embed, store); the next query sees them."""
    catalog = catalog_of(raw_request)
    pipeline = over_limits(request, catalog.limits) or catalog.pipeline(
        name, caller_of(raw_request.state))
    if isinstance(pipeline, ErrorResponse):
        return to_response(pipeline)
    documents = [Document(d.id, d.text) for d in request.documents]
    return await _store_call(pipeline, lambda: pipeline.retriever.upsert.remote(documents))


@router.delete("/v1/pipelines/{name}/documents/{document:path}")
async def delete_document(name: str, document: str, raw_request: Request) -> Response:
    pipeline = catalog_of(raw_request).pipeline(name, caller_of(raw_request.state))
    if isinstance(pipeline, ErrorResponse):
        return to_response(pipeline)
    return await _store_call(pipeline, lambda: pipeline.retriever.delete.remote(document),
                             key="deleted_chunks")


@router.get("/v1/pipelines/{name}")
async def pipeline_info(name: str, raw_request: Request) -> Response:
    pipeline = catalog_of(raw_request).pipeline(name, caller_of(raw_request.state))
    if isinstance(pipeline, ErrorResponse):
        return to_response(pipeline)
    return await _store_call(pipeline, lambda: pipeline.retriever.count.remote(), key="chunks")
