"""A small OpenAI HTTP client for tests: full and streamed responses → text and token ids."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Reply:
    status: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    body: Any = None


def _choice_text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return choice["text"] or ""
    message = choice.get("message") or choice.get("delta") or {}
    return message.get("content") or ""


def sse_chunks(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The parsed `data:` chunks of a streamed OpenAI answer (the `[DONE]` marker left out)."""
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: "):])


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> Reply:
    """POST and collect the reply, whether it streams (SSE) or not."""
    if not body.get("stream"):
        response = client.post(path, json=body)
        data = response.json()
        if response.status_code != 200:
            return Reply(response.status_code, body=data)
        choice = data["choices"][0]
        return Reply(200, _choice_text(choice), list(choice.get("token_ids") or []),
                     data.get("usage"), data)
    reply = Reply(0)
    with client.stream("POST", path, json=body) as response:
        reply.status = response.status_code
        if response.status_code != 200:
            response.read()
            reply.body = response.json()
            return reply
        for chunk in sse_chunks(response):
            if chunk.get("usage"):
                reply.usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                reply.text += _choice_text(choice)
                reply.token_ids.extend(choice.get("token_ids") or [])
    return reply
