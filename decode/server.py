"""Decode and colocated deployments: generate tokens, pulling transferred KV when given."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray import serve
from vllm.outputs import RequestOutput
from vllm.v1.engine.exceptions import EngineDeadError

from pdserve.decode.request import DecodeRequest
from pdserve.decode.resume import ReplicaLost
from pdserve.deployments.engine.host import EngineHost
from pdserve.kv_transfer.params import KVTransferParams


class GeneratingHost(EngineHost):
    """An engine host that generates: the decode and colocated pools."""

    async def generate(self, request: DecodeRequest) -> AsyncIterator[RequestOutput]:
        """Generate, pulling the prompt's KV first when the request carries transfer params."""
        pulling = request.kv_transfer_params is not None
        signals = self.track(request.routing, computes_prompt=not pulling)
        try:
            async for output in self.stream.outputs(request.engine_input,
                                                    request.engine_params(),
                                                    request.request_id, signals, pulling):
                yield output
        except EngineDeadError:
            # until Ray's health check replaces this replica, resumes must go elsewhere
            raise ReplicaLost("engine_dead", replica=self.replica_id) from None


@serve.deployment
class DecodeServer(GeneratingHost):
    """Decode pool: pulls KV over NIXL, or prefills locally when no params came (fallback)."""

    role = "decode"

    async def release_kv(self, request_id: str, kv_transfer_params: KVTransferParams) -> None:
        """Free a finished prefill's KV on its prefill engine: the decode meant to pull it is
        gone. vLLM's own way: this engine admits a pre-aborted request carrying the transfer
        params, and its connector tells the prefill engine to free the blocks."""
        await self.engine.notify_kv_transfer_request_rejected(request_id,
                                                              dict(kv_transfer_params))


@serve.deployment
class ColocatedServer(GeneratingHost):
    """Colocated pool: one engine prefills and decodes."""

    role = "colocated"
