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
    """PD model (1 prefill + 1 decode) and colocated model (1 engine): 3 x 0.5 CPU."""
    common = {"model": model_dir, "engine_kwargs": ENGINE_KWARGS}
    return {
        "models": [
            {
                "model_id": PD_MODEL,
                "mode": "pd",
                "kv_transfer": {"prefill_timeout_s": PREFILL_TIMEOUT_S},
                **common,
            },
            {"model_id": COLOCATED_MODEL, "mode": "colocated", **common},
        ],
        "testing": {"fault_injection": True},
    }
