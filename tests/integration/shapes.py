"""The one test application: every shape the integration tests need, started once.

Identical engine arguments on every compared path (PD pools, colocated pool, bare engine):
the tiny model is confident, but only identical settings make token equality meaningful.
"""

from __future__ import annotations

from typing import Any

HTTP_PORT = 8123
METRICS_PORT = 8124
APP_NAME = "pdserve"
PD_MODEL = "tiny-pd"
COLOCATED_MODEL = "tiny-colo"
BLOCK_SIZE = 32
MAX_NUM_BATCHED_TOKENS = 256
PREFILL_TIMEOUT_S = 6.0
COLOCATED_REPLICAS = 2
#: PD plan: prompts with fewer uncached tokens than this prefill on the decode replica.
LOCAL_PREFILL_BELOW_TOKENS = 16
#: KV blocks per colocated engine: enough for one max-length request (1024 / 32 = 32 blocks),
#: small enough that a few long prompts force evictions (vLLM's `BlockRemoved`).
COLOCATED_GPU_BLOCKS = 48

ENGINE_KWARGS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 1024,
    "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS,
    "block_size": BLOCK_SIZE,
    "kv_cache_memory_bytes": 128 * 2**20,
    "enforce_eager": True,
    "seed": 0,
}


def app_args(model_dir: str) -> dict[str, Any]:
    """PD model (1 prefill + 1 decode) and a colocated pool of 2 engines: 4 x 0.5 CPU.

    The PD model disaggregates every prompt with at least 16 uncached tokens (so the KV-transfer
    tests see transfers) and prefills shorter ones, or already-cached ones, on the decode replica.
    The colocated pool is the prefix-aware router's test bed; its cache size only changes
    capacity, not numerics, so its output still equals the other paths token for token.
    """
    return {
        "models": [
            {
                "model_id": PD_MODEL,
                "model": model_dir,
                "engine_kwargs": ENGINE_KWARGS,
                "mode": "pd",
                "kv_transfer": {"prefill_timeout_s": PREFILL_TIMEOUT_S},
                "routing": {"local_prefill_below_tokens": LOCAL_PREFILL_BELOW_TOKENS,
                            "max_prefill_queue_per_replica": 10_000},
            },
            {
                "model_id": COLOCATED_MODEL,
                "model": model_dir,
                "engine_kwargs": {**ENGINE_KWARGS,
                                  "num_gpu_blocks_override": COLOCATED_GPU_BLOCKS},
                "mode": "colocated",
                "colocated": {"num_replicas": COLOCATED_REPLICAS},
            },
        ],
        "testing": {"fault_injection": True},
    }
