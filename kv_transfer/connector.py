"""vLLM `kv_transfer_config` for an engine that produces or consumes KV over NIXL.

The connector is vLLM's `NixlConnector` loaded from pdserve's quiet module (named by module
path, so only engine processes import it), whose NIXL progress thread sleeps the configured
delay between polls. Decode engines recompute locally when a KV load fails instead of failing
the request.
"""

from __future__ import annotations

from typing import Any, Literal

KVRole = Literal["kv_producer", "kv_consumer"]

#: vLLM's NIXL connector with a sleeping progress thread (`kv_transfer/quiet_nixl.py`).
QUIET_CONNECTOR_MODULE = "pdserve.kv_transfer.quiet_nixl"
#: `kv_connector_extra_config` key the quiet connector reads its delay (µs) from.
PROGRESS_DELAY_KEY = "pdserve_progress_thread_delay_us"
#: vLLM `worker_extension_cls` that lets the engine host ask the worker about its NIXL agent.
NIXL_STATE_EXTENSION = f"{QUIET_CONNECTOR_MODULE}.NixlStateExtension"


def kv_transfer_config(
    kv_role: KVRole, engine_id: str, kv_buffer_device: str, progress_delay_us: int,
    kv_lease_s: int = 30,
) -> dict[str, Any]:
    """The connector config of one engine (`progress_delay_us` 0: NIXL's own busy poll;
    `kv_lease_s`: how long a prefill engine keeps KV no decoder has pulled, vLLM's
    `kv_lease_duration`)."""
    return {
        "kv_connector": "NixlConnector",
        "kv_connector_module_path": QUIET_CONNECTOR_MODULE,
        "kv_connector_extra_config": {PROGRESS_DELAY_KEY: progress_delay_us,
                                      "kv_lease_duration": kv_lease_s},
        "kv_role": kv_role,
        "kv_buffer_device": kv_buffer_device,
        "engine_id": engine_id,
        "kv_load_failure_policy": "recompute",
    }
