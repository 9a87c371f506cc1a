"""Anthropic's `/v1/messages` and `/v1/messages/count_tokens` through vLLM's own class, which
turns a Messages request into a chat request and the chat answer back into Anthropic's shapes.

The chat request it makes goes through the same checks as one sent to `/v1/chat/completions`
(`generation.resolve`: limits, model access, output cap, the caller's prefix-cache namespace),
so the Anthropic route admits nothing the OpenAI one would refuse. Errors come back in
Anthropic's shape (`{"type": "error", "error": {...}}`), which its SDK reads. vLLM's class is
built once per model, on first use, over the model's client, registry and renderer. A pipeline
refuses the route: it answers chat completions.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from weakref import WeakKeyDictionary

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.anthropic.api_router import translate_error_response
from vllm.entrypoints.anthropic.protocol import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
    AnthropicMessagesResponse,
)
from vllm.entrypoints.anthropic.serving import AnthropicServingMessages
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.utils.api_utils import validate_json_request, with_cancellation

from pdserve.deployments.api.catalog import catalog_of, model_front
from pdserve.deployments.api.generation import resolve, tag_session
from pdserve.deployments.frontend.model import ModelFrontend

router = APIRouter()


class CheckedMessages(AnthropicServingMessages):
    """vLLM's Messages class whose chat requests pass pdserve's chat checks first."""

    async def create_chat_completion(self, request: ChatCompletionRequest,
                                     raw_request: Request | None = None) -> Any:
        if raw_request is None:  # (vLLM's route always passes it; pdserve's too)
            raise ValueError("a Messages request needs its HTTP request")
        frontend = resolve(catalog_of(raw_request), request, raw_request)
        if isinstance(frontend, ErrorResponse):
            return in_messages_terms(frontend)
        if isinstance(frontend, ModelFrontend):
            tag_session(frontend, request, raw_request)
        return await super().create_chat_completion(request, raw_request)


#: chat's names for what a Messages request calls otherwise (vLLM's conversion renames them)
CHAT_NAMES = {"max_completion_tokens": "max_tokens"}


def in_messages_terms(error: ErrorResponse) -> ErrorResponse:
    """A chat check's error, naming the Messages request's own field."""
    param = error.error.param
    if param not in CHAT_NAMES:
        return error
    return create_error_response(error.error.message.replace(param, CHAT_NAMES[param]),
                                 err_type=error.error.type,
                                 status_code=HTTPStatus(error.error.code),
                                 param=CHAT_NAMES[param])


_HANDLERS: WeakKeyDictionary[ModelFrontend, CheckedMessages] = WeakKeyDictionary()


def messages_of(frontend: ModelFrontend) -> CheckedMessages:
    handler = _HANDLERS.get(frontend)
    if handler is None:
        handler = _HANDLERS[frontend] = CheckedMessages(
            frontend.client, frontend.registry, "assistant",
            online_renderer=frontend.renderer, **frontend.chat_kwargs)
    return handler


@router.post("/v1/messages", dependencies=[Depends(validate_json_request)])
@with_cancellation
async def create_message(request: AnthropicMessagesRequest, raw_request: Request) -> Response:
    frontend = model_front(raw_request, request.model)
    if isinstance(frontend, ErrorResponse):
        return translate_error_response(frontend)
    result = await messages_of(frontend).create_messages(request, raw_request)
    if isinstance(result, ErrorResponse):
        return translate_error_response(result)
    if isinstance(result, AnthropicMessagesResponse):
        return JSONResponse(result.model_dump(exclude_none=True))
    return StreamingResponse(result, media_type="text/event-stream")


@router.post("/v1/messages/count_tokens", dependencies=[Depends(validate_json_request)])
@with_cancellation
async def count_tokens(request: AnthropicCountTokensRequest, raw_request: Request) -> Response:
    frontend = model_front(raw_request, request.model)
    if isinstance(frontend, ErrorResponse):
        return translate_error_response(frontend)
    result = await messages_of(frontend).count_tokens(request, raw_request)
    if isinstance(result, ErrorResponse):
        return translate_error_response(result)
    return JSONResponse(result.model_dump(exclude_none=True))
