"""`/v1/completions` and `/v1/chat/completions`, routed to the model's vLLM handlers (or to a
pipeline, which answers chat), and the same API for Python callers holding a handle."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.utils.api_utils import validate_json_request, with_cancellation

from pdserve.deployments.api.catalog import Catalog, catalog_of
from pdserve.deployments.api.errors import to_response
from pdserve.deployments.api.guard import caller_of
from pdserve.deployments.api.keys import ANONYMOUS, Caller, tenant_cache_salt
from pdserve.deployments.frontend.engine_client import SESSION_KEY
from pdserve.deployments.frontend.model import ModelFrontend
from pdserve.deployments.pipelines.rag import DEBUG_HEADER, PipelineFrontend

router = APIRouter()


def tag_session(frontend: ModelFrontend, request: Any, raw_request: Request) -> None:
    """Carry the session header to the router as routing data (via `vllm_xargs`)."""
    session = raw_request.headers.get(frontend.model.routing.session_header)
    if session:
        request.vllm_xargs = {**(request.vllm_xargs or {}), SESSION_KEY: session}


def prompt_count(request: CompletionRequest | ChatCompletionRequest) -> int:
    """Prompts in one request: a completion's `prompt` may be a batch (strings or token-id
    lists), each an engine request of its own."""
    prompt = getattr(request, "prompt", None)
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


#: vLLM's request fields that only the server may set: a client's `kv_transfer_params` would
#: replace the rendered prompt (vLLM's renderer takes its `prompt_token_ids`), skipping the chat
#: template and a pipeline's system prompt and context; pdserve sets them for its own transfers.
SERVER_FIELDS = ("kv_transfer_params", "ec_transfer_params")


def server_fields_refusal(request: Any) -> ErrorResponse | None:
    """400 for a request that sets a field only the server may set (`SERVER_FIELDS`)."""
    for field in SERVER_FIELDS:
        if getattr(request, field, None) is not None:
            return create_error_response(f"{field} is set by the server, not by clients",
                                         param=field)
    return None


def over_limits(catalog: Catalog, request: CompletionRequest | ChatCompletionRequest,
                caller: Caller = ANONYMOUS) -> ErrorResponse | None:
    """400 for what `limits:` bounds in a generation request (before any engine sees it), and
    for fields only the server sets."""
    if (refused := server_fields_refusal(request)) is not None:
        return refused
    limits = catalog.limits
    if (request.n or 1) > limits.max_n:
        return create_error_response(f"n must be at most {limits.max_n} on this server",
                                     param="n")
    if prompt_count(request) > limits.max_prompts:
        return create_error_response(
            f"prompt may hold at most {limits.max_prompts} prompts on this server",
            param="prompt")
    if request.use_beam_search and caller.rate_limits and caller.rate_limits.tokens_per_minute:
        # (vLLM's beam search sends every beam's whole prefix to the engine at every step)
        return create_error_response("use_beam_search is not available to API keys with a "
                                     "token limit", param="use_beam_search")
    return None


#: what vLLM gives a completion naming no `max_tokens` (its validator marks the field set)
COMPLETION_DEFAULT_MAX_TOKENS = CompletionRequest.model_fields["max_tokens"].default


def output_bounds(request: Any) -> tuple[list[str], str]:
    """A request's fields that bound its output, in the order vLLM reads them, and the one a
    request naming none gets the cap in."""
    if isinstance(request, ResponsesRequest):
        return ["max_output_tokens"], "max_output_tokens"
    if isinstance(request, ChatCompletionRequest):
        return ["max_completion_tokens", "max_tokens"], "max_tokens"
    return ["max_tokens"], "max_tokens"


def cap_output(frontend: ModelFrontend | PipelineFrontend,
               request: CompletionRequest | ChatCompletionRequest | ResponsesRequest
               ) -> ErrorResponse | None:
    """400 past the model's `max_output_tokens`; a request naming no bound gets the cap."""
    model = (frontend.llm if isinstance(frontend, PipelineFrontend) else frontend).model
    cap = model.max_output_tokens
    if cap is None:
        return None
    fields, default = output_bounds(request)
    asked = next((f for f in fields if getattr(request, f) is not None), None)
    if asked is None:  # chat or Responses naming no bound
        setattr(request, default, cap)
        return None
    if asked == "max_tokens" and request.max_tokens == COMPLETION_DEFAULT_MAX_TOKENS:
        request.max_tokens = min(request.max_tokens, cap)  # (vLLM's default, maybe unasked)
        return None
    if getattr(request, asked) > cap:
        return create_error_response(
            f"{asked} must be at most {cap} for the model `{model.model_id}` on this server",
            param=asked)
    return None


def checked_frontend(catalog: Catalog, request: CompletionRequest | ChatCompletionRequest,
                     caller: Caller = ANONYMOUS
                     ) -> ModelFrontend | PipelineFrontend | ErrorResponse:
    """The front for the request's model, if `caller` may use it and the request is within
    `limits:` and the model's output cap (HTTP and handle callers alike)."""
    frontend = over_limits(catalog, request, caller) or catalog.frontend(request.model, caller)
    if isinstance(frontend, ErrorResponse):
        return frontend
    return cap_output(frontend, request) or frontend


def resolve(catalog: Catalog, request: CompletionRequest | ChatCompletionRequest,
            raw_request: Request) -> ModelFrontend | PipelineFrontend | ErrorResponse:
    """`checked_frontend` for an HTTP caller, whose request then runs in its caller's
    prefix-cache namespace."""
    caller = caller_of(raw_request.state)
    frontend = checked_frontend(catalog, request, caller)
    if not isinstance(frontend, ErrorResponse):
        run_in_namespace_of(caller, request)
    return frontend


def run_in_namespace_of(caller: Caller, request: Any) -> None:
    """The request runs in its caller's prefix-cache namespace (`keys.tenant_cache_salt`)."""
    salt = tenant_cache_salt(caller, request.cache_salt)
    if salt != request.cache_salt:
        request.cache_salt = salt


@router.post("/v1/completions", dependencies=[Depends(validate_json_request)])
@with_cancellation
async def completions(request: CompletionRequest, raw_request: Request) -> Response:
    frontend = resolve(catalog_of(raw_request), request, raw_request)
    if isinstance(frontend, ErrorResponse):
        return to_response(frontend)
    if isinstance(frontend, PipelineFrontend):
        return to_response(create_error_response(
            f"pipeline `{request.model}` answers chat completions (/v1/chat/completions)",
            param="model"))
    tag_session(frontend, request, raw_request)
    return to_response(await frontend.completions.create_completion(request, raw_request))


@router.post("/v1/chat/completions", dependencies=[Depends(validate_json_request)])
@with_cancellation
async def chat(request: ChatCompletionRequest, raw_request: Request) -> Response:
    frontend = resolve(catalog_of(raw_request), request, raw_request)
    if isinstance(frontend, ErrorResponse):
        return to_response(frontend)
    if isinstance(frontend, PipelineFrontend):
        tag_session(frontend.llm, request, raw_request)
        debug = raw_request.headers.get(DEBUG_HEADER, "").lower() in ("1", "true", "yes")
        if debug and not caller_of(raw_request.state).may("admin"):  # it shows the prompt
            return to_response(create_error_response(
                f"The `{DEBUG_HEADER}` header needs an API key with the `admin` scope.",
                err_type="PermissionDeniedError", status_code=HTTPStatus.FORBIDDEN))
        return to_response(await frontend.chat(request, raw_request, debug))
    tag_session(frontend, request, raw_request)
    return to_response(await frontend.chat.create_chat_completion(request, raw_request))


async def handle_call(catalog: Catalog, body: dict[str, Any], api: str) -> dict[str, Any]:
    """An OpenAI request body → the response (or error) body, not streamed: `api` is
    `completions` or `chat` (what a `DeploymentHandle` caller gets instead of HTTP)."""
    kind = CompletionRequest if api == "completions" else ChatCompletionRequest
    try:
        request = kind.model_validate({**body, "stream": False})
    except ValueError as exc:
        return create_error_response(exc).model_dump()
    frontend = checked_frontend(catalog, request)
    if isinstance(frontend, ErrorResponse):
        return frontend.model_dump()
    if isinstance(frontend, PipelineFrontend):
        if api != "chat":
            return create_error_response("pipelines answer chat completions").model_dump()
        result = await frontend.chat(request, None)  # type: ignore[arg-type]
        return result if isinstance(result, dict) else result.model_dump()
    if api == "completions":
        result = await frontend.completions.create_completion(request, None)  # type: ignore[arg-type]
    else:
        result = await frontend.chat.create_chat_completion(request, None)  # type: ignore[arg-type]
    return result.model_dump()
