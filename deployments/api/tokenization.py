"""`/tokenize` and `/detokenize`, as `vllm serve` has them: vLLM's own tokenization class over
the named model's renderer (its tokenizer and chat template), answered in the ingress without
any engine. A pipeline refuses them: its prompt depends on what it retrieves."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from vllm.entrypoints.serve.utils.api_utils import validate_json_request, with_cancellation

from pdserve.deployments.api.catalog import model_front
from pdserve.deployments.api.errors import to_response

router = APIRouter()

#: what a pipeline's refusal adds: its prompt depends on what it retrieves
TOKENIZE_HINT = "; its prompt depends on what it retrieves: tokenize with its model instead"


@router.post("/tokenize", dependencies=[Depends(validate_json_request)])
@with_cancellation
async def tokenize(request: TokenizeRequest, raw_request: Request) -> Response:
    frontend = model_front(raw_request, request.model, TOKENIZE_HINT)
    if isinstance(frontend, ErrorResponse):
        return to_response(frontend)
    return to_response(await frontend.tokenization.create_tokenize(request, raw_request))


@router.post("/detokenize", dependencies=[Depends(validate_json_request)])
@with_cancellation
async def detokenize(request: DetokenizeRequest, raw_request: Request) -> Response:
    frontend = model_front(raw_request, request.model, TOKENIZE_HINT)
    if isinstance(frontend, ErrorResponse):
        return to_response(frontend)
    return to_response(await frontend.tokenization.create_detokenize(request, raw_request))
