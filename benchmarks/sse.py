"""The server-sent events of one streamed OpenAI request, as parsed JSON chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


async def stream_chunks(http: httpx.AsyncClient, path: str, body: dict[str, Any],
                        headers: dict[str, str] | None = None) -> AsyncIterator[dict[str, Any]]:
    """POST a streamed request and yield each `data:` chunk; a non-200 answer raises with
    the server's body (its OpenAI error)."""
    async with http.stream("POST", path, json=body, headers=headers or {}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {await response.aread()!r}")
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[6:])
