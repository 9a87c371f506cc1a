"""OpenAI error JSON at the HTTP edge, through vLLM's own exception handlers: bad input is a
4xx with no traceback, path or address in it, and never takes the server down."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.exception_handling.handlers.http import http_exception_handler
from vllm.entrypoints.serve.exception_handling.handlers.validation import (
    validation_exception_handler,
)
from vllm.exceptions import VLLMError

from pdserve.deployments.api.guard import route_path
from pdserve.deployments.api.refusal import BodyTooLarge, too_large

logger = logging.getLogger(__name__)


def log_text(exc: Exception) -> str:
    """What a failed request leaves in the log: the error's kind and message, but for a
    validation error only where it failed (its text quotes the input, e.g. a prompt)."""
    if isinstance(exc, ValidationError):
        where = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        return f"{type(exc).__name__} at {where or 'the request'}"
    return f"{type(exc).__name__}: {exc}"


async def _error_json(request: Request, exc: Exception) -> JSONResponse:
    """Any other error → OpenAI error JSON with vLLM's status mapping (4xx for client errors)."""
    logger.warning("request failed: %s", log_text(exc))
    error = create_error_response(exc)
    return JSONResponse(error.model_dump(), status_code=error.error.code)


#: Errors of a request (vLLM's validation, bad values) answered where they are raised: a
#: handler for `Exception` itself answers too but then re-raises (Starlette), which makes Ray
#: log a traceback in the replica and the proxy for every bad request.
REQUEST_ERRORS = (VLLMError, ValueError, TypeError, OverflowError, NotImplementedError)


async def _http_error(request: Request, exc: Exception) -> Response:
    """vLLM's HTTP-error JSON, with the headers the exception carries (vLLM's drops them)."""
    response = await http_exception_handler(request, exc)  # type: ignore[arg-type]
    response.headers.update(getattr(exc, "headers", None) or {})
    return response


async def _body_too_large(request: Request, exc: Exception) -> Response:
    return too_large(exc.limit)  # type: ignore[attr-defined]


#: routes of Anthropic's API: their errors take Anthropic's shape (`api/messages.py`)
ANTHROPIC_PATHS = ("/v1/messages",)


def anthropic_shape(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's error JSON → Anthropic's (`{"type": "error", "error": {type, message}}`)."""
    error = body.get("error") or {}
    return {"type": "error", "error": {"type": error.get("type", "invalid_request_error"),
                                       "message": error.get("message", "")}}


def in_each_apis_shape(handler: Any) -> Any:
    """`handler`'s error JSON, reshaped for Anthropic's routes."""
    async def handle(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        if (not route_path(request.scope).startswith(ANTHROPIC_PATHS)
                or not isinstance(response, JSONResponse)):
            return response
        body = anthropic_shape(json.loads(response.body))
        headers = {k: v for k, v in response.headers.items()
                   if k.lower() not in ("content-length", "content-type")}
        return JSONResponse(body, status_code=response.status_code, headers=headers)
    return handle


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BodyTooLarge, _body_too_large)
    app.add_exception_handler(HTTPException, in_each_apis_shape(_http_error))
    app.add_exception_handler(RequestValidationError,
                              in_each_apis_shape(validation_exception_handler))
    for kind in REQUEST_ERRORS:
        app.add_exception_handler(kind, in_each_apis_shape(_error_json))
    app.add_exception_handler(Exception, in_each_apis_shape(_error_json))


def to_response(result: Any) -> Response:
    """vLLM serving results → HTTP: error JSON, a full response, or an SSE stream."""
    if isinstance(result, ErrorResponse):
        unavailable = result.error.code == HTTPStatus.SERVICE_UNAVAILABLE
        retry = {"Retry-After": "1"} if unavailable else None
        return JSONResponse(result.model_dump(), status_code=result.error.code, headers=retry)
    if hasattr(result, "model_dump"):
        return JSONResponse(result.model_dump())
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(result, media_type="text/event-stream")


def not_found(what: str, name: str | None, served: list[str], param: str) -> ErrorResponse:
    return create_error_response(
        f"The {what} `{name}` does not exist. Served: {', '.join(sorted(served))}.",
        err_type="NotFoundError", status_code=HTTPStatus.NOT_FOUND, param=param)
