"""OpenAI's Responses API and Anthropic's Messages API through the graph (issue 21), driven by
the unmodified official SDKs: on the PD path (prefill, KV transfer, decode) and the colocated
one, each answer's text equals the chat-completions answer to the same prompt; bad requests
come back as 4xx in each API's own error shape."""

from __future__ import annotations

import uuid
from typing import Any

import anthropic
import httpx
import openai
import pytest
from client import post
from shapes import COLOCATED_MODEL, PD_MODEL, PIPELINE_LANCEDB

MODELS = (PD_MODEL, COLOCATED_MODEL)
#: long enough to disaggregate on the PD model (it prefills remotely from 16 uncached tokens)
PROMPT = ("the river runs past the stone mill and the stone mill stands by the river; "
          "the river and the")
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def oai(serve_app: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{serve_app}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def claude(serve_app: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=serve_app, api_key="unused", max_retries=0)


def fresh() -> dict[str, str]:
    """A prefix-cache namespace of its own, so each request prefills its whole prompt (on the
    PD model: remotely, its KV moved over NIXL) instead of reusing the previous request's."""
    return {"cache_salt": uuid.uuid4().hex}


def greedy() -> dict[str, Any]:
    """Anthropic's SDK (2.x) has no `temperature` argument; vLLM's Messages API takes it."""
    return {"temperature": 0, **fresh()}


def chat_answer(client: httpx.Client, model: str) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS, "temperature": 0, **fresh()}
    reply = post(client, "/v1/chat/completions", body)
    assert reply.status == 200, reply.body
    return reply.body


@pytest.mark.parametrize("model", MODELS)
def test_a_response_equals_the_chat_answer(client: httpx.Client, oai: openai.OpenAI,
                                           model: str) -> None:
    choice = chat_answer(client, model)["choices"][0]
    expected = choice["message"]["content"]
    assert expected.strip(), "the chat answer is empty: nothing to compare"
    response = oai.responses.create(model=model, input=PROMPT, max_output_tokens=MAX_TOKENS,
                                    temperature=0, extra_body=fresh())
    # a chat cut at max_tokens is a response cut at max_output_tokens ("incomplete")
    if choice["finish_reason"] == "length":
        assert response.status == "incomplete", response
        assert response.incomplete_details.reason == "max_output_tokens", response
    else:
        assert response.status == "completed", response
    assert response.output_text == expected
    streamed = ""
    with oai.responses.stream(model=model, input=PROMPT, max_output_tokens=MAX_TOKENS,
                              temperature=0, extra_body=fresh()) as events:
        for event in events:
            if event.type == "response.output_text.delta":
                streamed += event.delta
        final = events.get_final_response()
    assert streamed == expected
    assert final.output_text == expected


@pytest.mark.parametrize("model", MODELS)
def test_a_message_equals_the_chat_answer(client: httpx.Client, claude: anthropic.Anthropic,
                                          model: str) -> None:
    chat = chat_answer(client, model)
    expected = chat["choices"][0]["message"]["content"]
    message = claude.messages.create(model=model, max_tokens=MAX_TOKENS, extra_body=greedy(),
                                     messages=[{"role": "user", "content": PROMPT}])
    assert message.content[0].type == "text"
    assert message.content[0].text == expected
    assert message.stop_reason == ("max_tokens" if chat["choices"][0]["finish_reason"] == "length"
                                   else "end_turn")
    # Anthropic's input is split: new, written to the cache (vLLM's external KV: a PD
    # transfer) and read from it (none: a fresh namespace); together, chat's prompt tokens
    usage = message.usage
    assert not usage.cache_read_input_tokens, usage
    assert usage.input_tokens + (usage.cache_creation_input_tokens or 0) == (
        chat["usage"]["prompt_tokens"]), usage
    assert message.usage.output_tokens == chat["usage"]["completion_tokens"]
    with claude.messages.stream(model=model, max_tokens=MAX_TOKENS, extra_body=greedy(),
                                messages=[{"role": "user", "content": PROMPT}]) as stream:
        streamed = "".join(stream.text_stream)
    assert streamed == expected
    counted = claude.messages.count_tokens(model=model,
                                           messages=[{"role": "user", "content": PROMPT}])
    assert counted.input_tokens == chat["usage"]["prompt_tokens"]


def test_responses_refuse_what_needs_a_stored_response(client: httpx.Client,
                                                       oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model=PD_MODEL, input=PROMPT, max_output_tokens=4,
                             previous_response_id="resp_123")
    error = refused.value.body
    assert error["param"] == "previous_response_id" and "input" in error["message"], error
    reply = post(client, "/v1/responses", {"model": PD_MODEL, "input": PROMPT,
                                           "background": True, "store": True})
    assert reply.status == 400 and reply.body["error"]["param"] == "background", reply.body
    for method, path in (("GET", "/v1/responses/resp_123"),
                         ("POST", "/v1/responses/resp_123/cancel")):
        got = client.request(method, path)
        assert got.status_code == 400, got.text
        assert "does not store responses" in got.json()["error"]["message"]


def test_responses_and_messages_answer_bad_requests_in_their_own_shape(
    client: httpx.Client, claude: anthropic.Anthropic
) -> None:
    pipeline = PIPELINE_LANCEDB
    for body, status in (({"model": "nope", "input": "hi"}, 404),
                         ({"model": PD_MODEL, "input": "hi", "temperature": "hot"}, 400),
                         ({"model": pipeline, "input": "hi"}, 400)):
        reply = post(client, "/v1/responses", body)
        assert reply.status == status, (body, reply.body)
        assert set(reply.body["error"]) >= {"message", "type", "code"}, reply.body
    no_max_tokens = {"model": PD_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    for body, status in ((no_max_tokens, 400),
                         ({**no_max_tokens, "max_tokens": 4, "model": "nope"}, 404),
                         ({**no_max_tokens, "max_tokens": 4, "model": pipeline}, 400)):
        reply = post(client, "/v1/messages", body)
        assert reply.status == status, (body, reply.body)
        assert reply.body["type"] == "error" and reply.body["error"]["message"], reply.body
        assert "Traceback" not in reply.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="nope", max_tokens=4,
                               messages=[{"role": "user", "content": "hi"}])
    assert client.get("/health").status_code == 200
