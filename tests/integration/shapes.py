"""The one test application: every shape the integration tests need, started once.

Identical engine arguments on every compared path (PD pools, colocated pool, bare engine):
the tiny model is confident, but only identical settings make token equality meaningful.
"""

from __future__ import annotations

from typing import Any

from pdserve.routing.scorers import PREFIX_AWARE_WEIGHTS

HTTP_PORT = 8123
METRICS_PORT = 8124
#: the body ceiling in Ray's proxy for the test session (`PDSERVE_PROXY_MAX_BODY_BYTES`); the
#: session app keeps the default 16 MiB limit behind it, the secure front 1 MiB
PROXY_MAX_BODY_BYTES = 4 << 20
APP_NAME = "pdserve"
PD_MODEL = "tiny-pd"
COLOCATED_MODEL = "tiny-colo"
BLOCK_SIZE = 32
MAX_NUM_BATCHED_TOKENS = 256
PREFILL_TIMEOUT_S = 6.0
COLOCATED_REPLICAS = 2
#: PD plan: prompts with fewer uncached tokens than this prefill on the decode replica.
LOCAL_PREFILL_BELOW_TOKENS = 16
#: KV blocks per colocated engine: enough for one max-length request (2048 / 32 = 64 blocks),
#: small enough that a few long prompts force evictions (vLLM's `BlockRemoved`).
COLOCATED_GPU_BLOCKS = 72

ENGINE_KWARGS: dict[str, Any] = {
    "dtype": "float32",
    # RAG prompts hold 5 paragraphs of prose; the tiny model's byte-level tokenizer spends
    # ~3 tokens per English word, so they reach ~1,500 tokens.
    "max_model_len": 2048,
    "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS,
    "block_size": BLOCK_SIZE,
    "kv_cache_memory_bytes": 128 * 2**20,
    "enforce_eager": True,
    "seed": 0,
    # JSON without free whitespace: the tiny model would otherwise fill a schema's whitespace
    "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    # the test adapters (`pdserve.tiny_lora`) on every engine, both in one batch
    "enable_lora": True,
    "max_loras": 2,
    "max_lora_rank": 32,
    "max_cpu_loras": 4,  # and one more loaded at run time
}

#: The LoRA adapters both generating models serve (`pdserve://tiny/<adapter>`), named per model.
ADAPTERS = ("no-recall", "shifted")


def adapter_name(model: str, adapter: str) -> str:
    return f"{model}-{adapter}"


def lora_modules(model: str) -> dict[str, str]:
    return {adapter_name(model, a): f"pdserve://tiny/{a}" for a in ADAPTERS}

#: vLLM's tool-call reading for both generating models (the tiny model writes pythonic calls
#: when its context shows some: an induction circuit)
TOOLS_KWARGS: dict[str, Any] = {"enable_auto_tool_choice": True, "tool_call_parser": "pythonic"}


EMBED_MODEL = "minilm"
#: RAG pipelines over the PD model: one per vector store, and one whose store is down.
PIPELINE_LANCEDB = "docs"
PIPELINE_QDRANT = "docs-qdrant"
PIPELINE_DOWN = "docs-down"
RAG_TOP_K = 5


def rag_pipelines(store_dir: str) -> list[dict[str, Any]]:
    common = {"embedding_model": EMBED_MODEL, "llm": PD_MODEL, "top_k": RAG_TOP_K,
              "system_prompt": "Answer from the context."}
    return [
        {"name": PIPELINE_LANCEDB, **common,
         "store": {"kind": "lancedb", "uri": f"{store_dir}/lancedb"}},
        {"name": PIPELINE_QDRANT, **common,
         "store": {"kind": "qdrant", "uri": f"{store_dir}/qdrant"}},  # qdrant-client local mode
        {"name": PIPELINE_DOWN, **common,
         "store": {"kind": "qdrant", "uri": "http://127.0.0.1:9"}},  # nothing listens there
    ]


def app_args(model_dir: str, store_dir: str) -> dict[str, Any]:
    """PD model (1 prefill + 1 decode), a colocated pool of 2 engines and an embedding pool:
    5 x 0.5 CPU; three RAG pipelines over the PD model.

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
                "lora_modules": lora_modules(PD_MODEL),
                **TOOLS_KWARGS,
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
                "colocated": {
                    "num_replicas": COLOCATED_REPLICAS,
                    # the default router with the opt-in `session_spread`, sessions live
                    # for the whole test session (so none expires mid-test)
                    "request_router_config": {"request_router_kwargs": {
                        "weights": {**PREFIX_AWARE_WEIGHTS, "session_spread": 1.0},
                        "session_live_s": 24 * 3600}},
                },
                "lora_modules": lora_modules(COLOCATED_MODEL),
                **TOOLS_KWARGS,
            },
            {
                "model_id": EMBED_MODEL,
                "model": "pdserve://all-minilm-l6-v2",
                "mode": "embed",
                "engine_kwargs": {"dtype": "float32", "enforce_eager": True,
                                  "gpu_memory_utilization": 0.2},
            },
        ],
        "pipelines": rag_pipelines(store_dir),
        "testing": {"fault_injection": True},
    }
