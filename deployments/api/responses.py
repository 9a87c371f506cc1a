"""`/v1/responses` (OpenAI's Responses API) through vLLM's own serving class, on the named
model's pool graph like chat.

vLLM keeps stored responses, their messages and background tasks in dicts of the process that
served them, so with more than one ingress replica a follow-up would reach a replica that never
saw the response. pdserve stores none: what needs a stored response (`previous_response_id`,
`background`, retrieving or cancelling one) is refused with a 400 that says to send the
conversation in `input`; `store` itself is ignored, as `vllm serve` does by default. A pipeline
refuses the route: it answers chat completions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest, ResponsesResponse
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.utils.api_utils import validate_json_request, with_cancellation

from pdserve.deployments.api.catalog import model_front
from pdserve.deployments.api.errors import to_response
from pdserve.deployments.api.generation import (
    cap_output,
    run_in_namespace_of,
    server_fields_refusal,
    tag_session,
)
from pdserve.deployments.api.guard import caller_of
from pdserve.deployments.frontend.model import ModelFrontend

router = APIRouter()

NOT_STORED = ("pdserve does not store responses (each ingress replica would hold its own), so "
              "`{param}` is not available: send the whole conversation in `input` instead.")


def unstored(param: str) -> ErrorResponse:
    return create_error_response(NOT_STORED.format(param=param), param=param)


def checked(request: ResponsesRequest, raw_request: Request) -> ModelFrontend | ErrorResponse:
    """The named model's front, if the caller may use it and the request needs no stored
    response, sets no server-only field and stays within the model's output cap; the request
    then runs in the caller's prefix-cache namespace."""
    caller = caller_of(raw_request.state)
    frontend = model_front(raw_request, request.model)
    if isinstance(frontend, ErrorResponse):
        return frontend
    for param in ("previous_response_id", "background"):
        if getattr(request, param):
            return unstored(param)
    if (refused := server_fields_refusal(request)) is not None:
        return refused
    if (refused := cap_output(frontend, request)) is not None:
        return refused
    run_in_namespace_of(caller, request)
    return frontend


async def sse_events(events: AsyncIterator) -> AsyncIterator[str]:
    """Responses stream events as server-sent events named by their type (as OpenAI sends)."""
    async for event in events:
        yield (f"event: {getattr(event, 'type', 'unknown')}\n"
               f"data: {event.model_dump_json(indent=None, by_alias=True)}\n\n")


@router.post("/v1/responses", dependencies=[Depends(validate_json_request)])
@with_cancellation
async def create_response(request: ResponsesRequest, raw_request: Request) -> Response:
    frontend = checked(request, raw_request)
    if isinstance(frontend, ErrorResponse):
        return to_response(frontend)
    tag_session(frontend, request, raw_request)
    result = await frontend.responses.create_responses(request, raw_request)
    if isinstance(result, ErrorResponse):
        return to_response(result)
    if isinstance(result, ResponsesResponse):
        return JSONResponse(result.model_dump(mode="json", by_alias=True))
    return StreamingResponse(sse_events(result), media_type="text/event-stream")


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str) -> Response:
    return to_response(unstored("response_id"))


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str) -> Response:
    return to_response(unstored("response_id"))
