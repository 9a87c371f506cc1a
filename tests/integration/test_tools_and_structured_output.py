"""Tool calling and structured output through the graph (issue 21): vLLM's own tool parser and
structured-output backend, the PD path (prefill, KV transfer, decode) answering exactly as the
colocated engines and a bare vLLM engine given the same constraint do (`constrained.py`: the
requests, and why the tiny model writes tool calls)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from client import post
from constrained import (
    ANSWER_SCHEMA,
    CITIES,
    JSON_CALL,
    MAX_TOKENS,
    PLAIN,
    PYTHONIC_CALL,
    TOOLS,
    shown,
)
from shapes import COLOCATED_MODEL, PD_MODEL

MODELS = (PD_MODEL, COLOCATED_MODEL)


def chat(client: httpx.Client, model: str, messages: list[dict[str, str]], **extra: Any
         ) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0,
            **extra}
    reply = post(client, "/v1/chat/completions", body)
    assert reply.status == 200, reply.body
    return reply.body


def streamed_calls(client: httpx.Client, model: str, messages: list[dict[str, str]],
                   **extra: Any) -> tuple[dict[int, dict[str, str]], str | None, str]:
    """A streamed chat's tool calls (by index, arguments joined), finish reason and text."""
    body = {"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True, **extra}
    calls: dict[int, dict[str, str]] = {}
    finish, text = None, ""
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                delta = choice["delta"]
                text += delta.get("content") or ""
                for call in delta.get("tool_calls") or []:
                    got = calls.setdefault(call["index"], {"name": "", "arguments": ""})
                    got["name"] += call["function"].get("name") or ""
                    got["arguments"] += call["function"].get("arguments") or ""
                finish = choice.get("finish_reason") or finish
    return calls, finish, text


def the_call(body: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    choice = body["choices"][0]
    (call,) = choice["message"]["tool_calls"]
    return call["function"]["name"], json.loads(call["function"]["arguments"]), choice[
        "finish_reason"]


def test_response_format_json_schema_equals_the_bare_engines(
    client: httpx.Client, bare_constrained: dict[str, str]
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}
    texts = []
    for model in MODELS:
        content = chat(client, model, PLAIN, response_format=fmt)["choices"][0]["message"][
            "content"]
        assert json.loads(content)["answer"] in ("river", "stone"), content
        _, _, streamed = streamed_calls(client, model, PLAIN, response_format=fmt)
        assert streamed == content
        texts.append(content)
    assert texts[0] == texts[1]  # the PD path (KV moved over NIXL) answers as colocated
    assert texts[0] == bare_constrained["json-schema"]  # and as a bare engine
    free = chat(client, PD_MODEL, PLAIN)["choices"][0]["message"]["content"]
    assert not free.startswith("{")  # the schema, not the model, made it JSON


def test_named_tool_choice_calls_that_tool(client: httpx.Client,
                                           bare_constrained: dict[str, str]) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    calls = []
    for model in MODELS:
        name, args, _ = the_call(chat(client, model, PLAIN, tools=TOOLS, tool_choice=choice))
        assert name == "get_weather" and args["city"] in CITIES
        streamed, _, _ = streamed_calls(client, model, PLAIN, tools=TOOLS, tool_choice=choice)
        assert streamed[0]["name"] == "get_weather"
        assert json.loads(streamed[0]["arguments"]) == args
        calls.append(args)
    assert calls[0] == calls[1]
    # a bare engine constrained to the tool's parameters writes the same arguments
    assert calls[0] == json.loads(bare_constrained["named-tool"])


def test_required_tool_choice(client: httpx.Client) -> None:
    for model in MODELS:
        name, args, finish = the_call(chat(client, model, shown(JSON_CALL), tools=TOOLS,
                                           tool_choice="required"))
        assert (name, args, finish) == ("get_weather", {"city": "Paris"}, "tool_calls")


def test_auto_tool_choice_reads_the_models_own_calls(
    client: httpx.Client, bare_constrained: dict[str, str]
) -> None:
    """`auto` with vLLM's `pythonic` parser: a call the model writes comes back as a tool
    call (streamed too), the call a bare engine writes for the same prompt; plain text stays
    text."""
    assert bare_constrained["auto-tool"] == PYTHONIC_CALL
    for model in MODELS:
        body = chat(client, model, shown(PYTHONIC_CALL), tools=TOOLS, tool_choice="auto",
                    stop=["\n"])
        assert the_call(body) == ("get_weather", {"city": "Paris"}, "tool_calls")
        assert not body["choices"][0]["message"]["content"]
        calls, finish, text = streamed_calls(client, model, shown(PYTHONIC_CALL), tools=TOOLS,
                                             tool_choice="auto", stop=["\n"])
        assert finish == "tool_calls" and not text.strip()
        assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
            ("get_weather", {"city": "Paris"})]
        plain = chat(client, model, PLAIN, tools=TOOLS, tool_choice="auto", max_tokens=8)
        message = plain["choices"][0]["message"]
        assert message["content"] and not message.get("tool_calls")


BAD = [
    ("unknown named tool", {"tools": TOOLS,
                            "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    ("tool_choice without tools", {"tool_choice": "required"}),
    ("schema that is no schema", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "no-such-type"}}}}),
]


@pytest.mark.parametrize(("label", "extra"), BAD, ids=[b[0] for b in BAD])
def test_bad_tool_and_format_requests_get_openai_errors(
    client: httpx.Client, label: str, extra: dict[str, Any]
) -> None:
    reply = post(client, "/v1/chat/completions",
                 {"model": PD_MODEL, "messages": PLAIN, "max_tokens": 4, **extra})
    assert 400 <= reply.status < 500, (label, reply.status, reply.body)
    assert "Traceback" not in json.dumps(reply.body), label
    assert client.get("/health").status_code == 200
