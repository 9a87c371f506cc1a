"""A pipeline served as a model: retrieve for the last user message, then chat with the LLM.

The request the LLM gets is the client's own (every sampling parameter, streaming, tools
stay), with a system message of the pipeline's prompt and retrieved chunks put first; usage
therefore counts the real prompt. The response names the pipeline as its model and carries
the retrieved `sources`; with the debug header it also carries the prompt exactly as the LLM
saw it (its token ids, and their text).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from http import HTTPStatus
from typing import Any

from ray.serve.handle import DeploymentHandle
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

from pdserve import tracing
from pdserve.deployments.config.pipeline import PipelineConfig
from pdserve.deployments.frontend.model import ModelFrontend
from pdserve.deployments.pipelines.context import (
    Retrieval,
    build_messages,
    last_user_text,
    order_hits,
)
from pdserve.deployments.pipelines.stores import StoreUnavailable


def remote_cause(exc: BaseException) -> BaseException:
    """The replica's own exception inside Ray's wrapper (whose text is the remote traceback)."""
    return getattr(exc, "cause", None) or exc


#: Request header that asks for the prompt as the LLM saw it (`pdserve_debug` in the response).
DEBUG_HEADER = "x-pdserve-debug"


class PipelineFrontend:
    def __init__(
        self, config: PipelineConfig, llm: ModelFrontend, retriever: DeploymentHandle
    ) -> None:
        self.config = config
        self.llm = llm
        self.retriever = retriever
        self.tokenizer = llm.client.renderer.get_tokenizer()

    async def retrieve(self, query: str) -> Retrieval | ErrorResponse:
        """Hits in the configured order and retrieval timings, or a 503 if the store is down."""
        try:
            with tracing.active("pdserve.retrieve", tracing.SpanKind.CLIENT,
                                **{"pdserve.pipeline": self.config.name}):
                retrieval = await self.retriever.retrieve.remote(query)
        except StoreUnavailable as exc:
            return create_error_response(
                f"pipeline {self.config.name!r}: retrieval failed, the vector store is "
                f"unavailable ({remote_cause(exc)}); retry later",
                err_type="ServiceUnavailableError", status_code=HTTPStatus.SERVICE_UNAVAILABLE)
        return replace(retrieval, hits=order_hits(retrieval.hits, self.config.ordering))

    def _extras(self, retrieval: Retrieval, prompt_ids: list[int] | None,
                debug: bool) -> dict[str, Any]:
        extras: dict[str, Any] = {
            "sources": [h.source() for h in retrieval.hits],
            "retrieval": retrieval.timings(),
        }
        if debug and prompt_ids is not None:
            extras["pdserve_debug"] = {"prompt": self.tokenizer.decode(prompt_ids),
                                       "prompt_token_ids": prompt_ids,
                                       "llm": self.llm.model.model_id}
        return extras

    async def chat(self, request: ChatCompletionRequest, raw_request: Any,
                   debug: bool = False) -> Any:
        """vLLM's chat result for the augmented request: error, response dict, or SSE lines."""
        query = last_user_text(list(request.messages))
        if query is None:
            return create_error_response(
                f"pipeline {self.config.name!r} needs a user message with text to retrieve for",
                param="messages")
        retrieval = await self.retrieve(query)
        if isinstance(retrieval, ErrorResponse):
            return retrieval
        messages = build_messages(self.config.system_prompt, self.config.chunk_template,
                                  retrieval.hits, list(request.messages))
        body = request.model_dump(exclude_unset=True)
        body.update(model=self.llm.model.model_id, messages=messages,
                    return_token_ids=bool(request.return_token_ids or debug))
        result = await self.llm.chat.create_chat_completion(
            ChatCompletionRequest.model_validate(body), raw_request)
        if isinstance(result, ErrorResponse):
            return result
        if hasattr(result, "model_dump"):
            response = result.model_dump()
            response["model"] = self.config.name
            response.update(self._extras(retrieval, response.get("prompt_token_ids"), debug))
            return response
        return self._stream(result, retrieval, debug)

    async def _stream(self, lines: AsyncIterator[str], retrieval: Retrieval,
                      debug: bool) -> AsyncIterator[str]:
        """The LLM's SSE stream under the pipeline's name; the first chunk carries sources."""
        first = True
        async for line in lines:
            if not line.startswith("data: ") or line.startswith("data: [DONE]"):
                yield line
                continue
            chunk = json.loads(line[len("data: "):])
            if "model" in chunk:
                chunk["model"] = self.config.name
            if first and "error" not in chunk:
                chunk.update(self._extras(retrieval, chunk.get("prompt_token_ids"), debug))
                first = False
            yield f"data: {json.dumps(chunk)}\n\n"
