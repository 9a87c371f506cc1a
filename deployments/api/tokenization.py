"""`/tokenize` and `/detokenize`, as `vllm serve` has them: vLLM's own tokenization class over
the named model's renderer (its tokenizer and chat template), answered in the ingress without
any engine. A pipeline refuses them: its prompt depends on what it retrieves."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from vllm.entrypoints.serve.utils.api_utils import validate_json_request, with_cancellation

from pdserve.deployments.api.catalog import catalog_of
from pdserve.deployments.api.errors import to_response
from pdserve.deployments.api.guard import caller_of
from pdserve.deployments.frontend.model import ModelFrontend
from pdserve.deployments.pipelines.rag import PipelineFrontend

router = APIRouter()


def model_front(model: str | None, raw_request: Request) -> ModelFrontend | ErrorResponse:
    """The front of the named model (the first generating model when none is named), if the
    caller's key may use it."""
    frontend = catalog_of(raw_request).frontend(model, caller_of(raw_request.state))
    if isinstance(frontend, PipelineFrontend):
        return create_error_response(
            f"`{model}` is a pipeline: its prompt depends on what it retrieves, so it answers "
            "only /v1/chat/completions; tokenize with its model "
            f"`{frontend.llm.model.model_id}` instead.", param="model")
    return frontend


@router.post("/tokenize", dependencies=[Depends(validate_json_request)])
@with_cancellation
async def tokenize(request: TokenizeRequest, raw_request: Request) -> Response:
    frontend = model_front(request.model, raw_request)
    if isinstance(frontend, ErrorResponse):
        return to_response(frontend)
    return to_response(await frontend.tokenization.create_tokenize(request, raw_request))


@router.post("/detokenize", dependencies=[Depends(validate_json_request)])
@with_cancellation
async def detokenize(request: DetokenizeRequest, raw_request: Request) -> Response:
    frontend = model_front(request.model, raw_request)
    if isinstance(frontend, ErrorResponse):
        return to_response(frontend)
    return to_response(await frontend.tokenization.create_detokenize(request, raw_request))
