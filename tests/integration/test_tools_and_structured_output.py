"""Tool calling and structured output through the graph (issue 21): vLLM's own tool parser and
structured-output backend, with the PD path (prefill, KV transfer, decode) answering exactly as
the colocated engines do.

The tiny model is an induction circuit: it copies what followed the current token earlier in
its context. So a context that shows pythonic tool calls makes it write one (`auto`), and a
schema leaves it only the schema's choices (named tool, `required`, `response_format`)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from client import post
from shapes import COLOCATED_MODEL, PD_MODEL

MODELS = (PD_MODEL, COLOCATED_MODEL)
CITIES = ["Paris", "Rome"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": CITIES}},
                   "required": ["city"]}}}]
PLAIN = [{"role": "user", "content": "the river and the stone"}]
PYTHONIC_CALL = '[get_weather(city="Paris")]'
JSON_CALL = '[{"name":"get_weather","parameters":{"city":"Paris"}}]'


def shown(call: str) -> list[dict[str, str]]:
    """A context in which the induction model writes `call` next."""
    return [{"role": "user", "content": f"{call}\n{call}\n{call}\n"}]


def chat(client: httpx.Client, model: str, messages: list[dict[str, str]], **extra: Any
         ) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": 100, "temperature": 0, **extra}
    reply = post(client, "/v1/chat/completions", body)
    assert reply.status == 200, reply.body
    return reply.body


def streamed_calls(client: httpx.Client, model: str, messages: list[dict[str, str]],
                   **extra: Any) -> tuple[dict[int, dict[str, str]], str | None, str]:
    """A streamed chat's tool calls (by index, arguments joined), finish reason and text."""
    body = {"model": model, "messages": messages, "max_tokens": 100, "temperature": 0,
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


def test_response_format_json_schema_pd_equals_colocated(client: httpx.Client) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string",
                                                          "enum": ["river", "stone"]}},
              "required": ["answer"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    texts = []
    for model in MODELS:
        content = chat(client, model, PLAIN, response_format=fmt)["choices"][0]["message"][
            "content"]
        assert json.loads(content)["answer"] in ("river", "stone"), content
        _, _, streamed = streamed_calls(client, model, PLAIN, response_format=fmt)
        assert streamed == content
        texts.append(content)
    assert texts[0] == texts[1]  # the PD path (KV moved over NIXL) answers as colocated
    free = chat(client, PD_MODEL, PLAIN)["choices"][0]["message"]["content"]
    assert not free.startswith("{")  # the schema, not the model, made it JSON


def test_named_tool_choice_calls_that_tool(client: httpx.Client) -> None:
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


def test_required_tool_choice(client: httpx.Client) -> None:
    for model in MODELS:
        name, args, finish = the_call(chat(client, model, shown(JSON_CALL), tools=TOOLS,
                                           tool_choice="required"))
        assert (name, args, finish) == ("get_weather", {"city": "Paris"}, "tool_calls")


def test_auto_tool_choice_reads_the_models_own_calls(client: httpx.Client) -> None:
    """`auto` with vLLM's `pythonic` parser: a call the model writes comes back as a tool
    call (streamed too); plain text stays text."""
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
