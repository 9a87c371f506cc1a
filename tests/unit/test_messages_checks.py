"""`api/messages.py` checks the chat request vLLM's Anthropic class makes by overriding the
class's `create_chat_completion`: pinned here, so that an upgrade that stops routing Messages
through it fails loudly instead of skipping pdserve's limits and cache namespaces."""

from __future__ import annotations

import inspect

from vllm.entrypoints.anthropic.serving import AnthropicServingMessages
from vllm.entrypoints.openai.responses.serving import OpenAIServingResponses

from pdserve.deployments.api.messages import in_messages_terms


def test_vllms_messages_run_through_create_chat_completion() -> None:
    source = inspect.getsource(AnthropicServingMessages.create_messages)
    assert "await self.create_chat_completion(chat_req, raw_request)" in source


def test_a_chat_checks_error_names_the_messages_field() -> None:
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    chat = create_error_response("max_completion_tokens must be at most 64 for the model",
                                 param="max_completion_tokens")
    error = in_messages_terms(chat).error
    assert (error.param, error.message, error.code) == (
        "max_tokens", "max_tokens must be at most 64 for the model", 400)
    other = create_error_response("n must be at most 2", param="n")
    assert in_messages_terms(other) is other


def test_vllms_responses_store_is_a_public_switch() -> None:
    """`frontend/model.py` turns vLLM's per-process response store off by this attribute."""
    source = inspect.getsource(OpenAIServingResponses)
    assert "if request.store and not self.enable_store:" in source  # store quietly off
    assert "self.enable_store = envs.VLLM_ENABLE_RESPONSES_API_STORE" in source
