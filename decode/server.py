"""Decode and colocated deployments: generate tokens, pulling transferred KV when given."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray import serve
from vllm.outputs import RequestOutput

from pdserve.decode.request import DecodeRequest
from pdserve.deployments.engine.host import EngineHost


class GeneratingHost(EngineHost):
    """An engine host that generates: the decode and colocated pools."""

    async def generate(self, request: DecodeRequest) -> AsyncIterator[RequestOutput]:
        """Generate, pulling the prompt's KV first when the request carries transfer params."""
        pulling = request.kv_transfer_params is not None
        signals = self.track(request.routing, computes_prompt=not pulling)
        async for output in self.stream.outputs(request.engine_input, request.engine_params(),
                                                request.request_id, signals, pulling):
            yield output


@serve.deployment
class DecodeServer(GeneratingHost):
    """Decode pool: pulls KV over NIXL, or prefills locally when no params came (fallback)."""

    role = "decode"


@serve.deployment
class ColocatedServer(GeneratingHost):
    """Colocated pool: one engine prefills and decodes."""

    role = "colocated"
