"""Decode and colocated deployments: generate tokens, pulling transferred KV when given."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pdserve.deployments.engine import EngineHost
from pdserve.deployments.messages import DecodeRequest
from ray import serve
from vllm.outputs import RequestOutput


@serve.deployment
class DecodeServer(EngineHost):
    """Decode pool: pulls KV over NIXL, or prefills locally when no params came (fallback)."""

    role = "decode"

    async def generate(self, request: DecodeRequest) -> AsyncIterator[RequestOutput]:
        async for output in self.stream(request):
            yield output


@serve.deployment
class ColocatedServer(EngineHost):
    """Colocated pool: one engine prefills and decodes."""

    role = "colocated"

    async def generate(self, request: DecodeRequest) -> AsyncIterator[RequestOutput]:
        async for output in self.stream(request):
            yield output
