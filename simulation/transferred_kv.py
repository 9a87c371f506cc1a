"""A scheduler-side KV connector for simulated decode engines: a request marked as
transferred finds its prompt's KV already there (all but the last token, as vLLM's own
`DecodeBenchConnector` does), so the decode engine's scheduler allocates its blocks and
computes one token, as after a NIXL pull; unmarked requests (local prefill) compute their
prompt. The simulator delays the request by the transfer's time before adding it.

Loaded by vLLM's connector factory through `kv_connector_module_path`; only the scheduler
side is ever built (the simulator runs no model).
"""

from __future__ import annotations

from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
)

CONNECTOR_NAME = "SimTransferredKVConnector"
MODULE_PATH = __name__
WORKER_SIDE_ERROR = (f"{CONNECTOR_NAME} is scheduler-side only (pdserve's simulator); "
                     "it cannot move KV in a real engine")


class SimTransferredKVConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        self.transferred: set[str] = set()  # request ids whose prompt KV was pulled
        self._loaded: set[str] = set()

    # -- scheduler side ----------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int
                                   ) -> tuple[int, bool]:
        if request.request_id not in self.transferred or request.request_id in self._loaded:
            return 0, False
        return max(0, request.num_prompt_tokens - num_computed_tokens - 1), False

    def update_state_after_alloc(self, request: Any, blocks: Any,
                                 num_external_tokens: int) -> None:
        if num_external_tokens:
            self._loaded.add(request.request_id)

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        return KVConnectorMetadata()

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, None]:
        self.transferred.discard(request.request_id)
        self._loaded.discard(request.request_id)
        return False, None

    # -- worker side: vLLM's base class requires these; a simulation builds no worker, so a
    # call means the connector was configured on a real engine, which must fail loudly.
    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        raise RuntimeError(WORKER_SIDE_ERROR)

    def wait_for_layer_load(self, layer_name: str) -> None:
        raise RuntimeError(WORKER_SIDE_ERROR)

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any,
                      **kwargs: Any) -> None:
        raise RuntimeError(WORKER_SIDE_ERROR)

    def wait_for_save(self) -> None:
        raise RuntimeError(WORKER_SIDE_ERROR)
