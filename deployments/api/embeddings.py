"""`/v1/embeddings`: OpenAI embeddings from a model's embedding pool, with vLLM's own request
model, pooling encoders (`float`, `base64`) and usage."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from ray.exceptions import RayTaskError
from vllm.entrypoints.pooling.embed.protocol import (
    EmbeddingCompletionRequest,
    EmbeddingResponse,
    EmbeddingResponseData,
)
from vllm.entrypoints.pooling.utils import get_pooling_output_encoder, get_pooling_usage
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.utils.api_utils import validate_json_request

from pdserve.deployments.api.catalog import catalog_of, refused
from pdserve.deployments.api.errors import not_found, to_response
from pdserve.deployments.api.guard import caller_of
from pdserve.deployments.frontend.usage import add_tokens

router = APIRouter()


def embedding_inputs(request: EmbeddingCompletionRequest) -> list[str] | list[list[int]]:
    """OpenAI's `input`: a string, strings, token ids, or lists of token ids → a list."""
    items = request.input
    if isinstance(items, str):
        return [items]
    if items and all(isinstance(i, int) for i in items):
        return [list(items)]  # type: ignore[arg-type]
    return list(items)  # type: ignore[arg-type]


@router.post("/v1/embeddings", dependencies=[Depends(validate_json_request)])
async def embeddings(request: EmbeddingCompletionRequest, raw_request: Request) -> Response:
    catalog = catalog_of(raw_request)
    caller = caller_of(raw_request.state)
    if request.model not in catalog.embedders:
        usable = [name for name in catalog.embedders if caller.may_use(name)]
        if request.model in catalog.names():  # a generating model, adapter or pipeline
            return to_response(create_error_response(
                f"The model `{request.model}` does not serve embeddings; embedding models: "
                f"{', '.join(sorted(usable))}.", param="model"))
        return to_response(not_found("embedding model", request.model, usable, "model"))
    denied = refused(caller, request.model)
    if denied is not None:
        return to_response(denied)
    if request.encoding_format not in ("float", "base64"):
        return to_response(create_error_response(
            "encoding_format must be `float` or `base64`", param="encoding_format"))
    inputs = embedding_inputs(request)
    if not inputs or any(len(i) == 0 for i in inputs):
        return to_response(create_error_response("input must not be empty", param="input"))
    if len(inputs) > catalog.limits.max_embedding_inputs:
        return to_response(create_error_response(
            f"input may hold at most {catalog.limits.max_embedding_inputs} items on this "
            "server", param="input"))
    _, handle = catalog.embedders[request.model]
    try:
        outputs = await handle.embed.remote(inputs, request.to_pooling_params(),
                                            request.truncate_prompt_tokens)
    except RayTaskError as exc:  # the engine's own error (e.g. input too long), unwrapped
        return to_response(create_error_response(exc.cause))
    usage = get_pooling_usage(outputs)
    add_tokens(usage.prompt_tokens)  # the caller's token budget (per-key limits)
    encode = get_pooling_output_encoder(request.encoding_format, request.embed_dtype,
                                        request.endianness)
    response = EmbeddingResponse(
        model=request.model, usage=usage,
        data=[EmbeddingResponseData(index=i, embedding=encode(o)) for i, o in enumerate(outputs)])
    return JSONResponse(response.model_dump())
