"""The `kv_transfer_params` that travel between prefill and decode.

Ray Serve LLM, Dynamo and llm-d share this shape; vLLM's NixlConnector reads it from
`SamplingParams.extra_args["kv_transfer_params"]`, and a prefill engine returns the filled-in
version (`RequestOutput.kv_transfer_params`) that the decode request carries.
"""

from __future__ import annotations

from typing import Any, TypedDict

KV_PARAMS_KEY = "kv_transfer_params"


class KVTransferParams(TypedDict, total=False):
    """What the prefill engine's connector reports and the decode engine's connector reads
    (vLLM may add keys of its own, e.g. `tp_size`; they pass through untouched)."""

    do_remote_decode: bool
    do_remote_prefill: bool
    remote_engine_id: str | None
    remote_block_ids: list[int] | list[list[int]] | None
    remote_host: str | None
    remote_port: int | None


def remote_decode_request() -> KVTransferParams:
    """What a prefill request carries: compute the prompt, keep its KV for a remote decoder."""
    return {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }


def is_pull_ready(params: KVTransferParams | dict[str, Any] | None) -> bool:
    """True when prefill returned params a decode engine can pull KV with."""
    return bool(params) and bool(params.get("do_remote_prefill")) and bool(
        params.get("remote_engine_id")
    )


def without_transfer_params(extra_args: dict[str, Any] | None) -> dict[str, Any]:
    """`extra_args` minus any `kv_transfer_params`: only pdserve's orchestrator sets them."""
    return {k: v for k, v in (extra_args or {}).items() if k != KV_PARAMS_KEY}


def offered_blocks(params: KVTransferParams | dict[str, Any] | None) -> int:
    """How many KV blocks a prefill offers a decoder (per KV-cache group: vLLM nests the ids
    per group for hybrid models; the first group is counted)."""
    ids = (params or {}).get("remote_block_ids") or []
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return len(ids)


def block_bytes(vllm_config: Any) -> int:
    """Bytes of one KV block of the whole model, what pulling a block moves across all of the
    engine's ranks: K and V (one latent cache for MLA models) of block_size tokens x KV heads x
    head size per layer, in the cache's dtype, times tensor x pipeline parallel ranks (vLLM
    reports heads per tensor rank and layers per pipeline stage). 0 when the config does not
    say (then spans report blocks only)."""
    try:
        import torch
        from vllm.utils.torch_utils import get_kv_cache_torch_dtype

        model, cache = vllm_config.model_config, vllm_config.cache_config
        parallel = vllm_config.parallel_config
        dtype = get_kv_cache_torch_dtype(cache.cache_dtype, model.dtype)
        caches = 1 if model.use_mla else 2
        per_rank = (caches * cache.block_size * model.get_num_kv_heads(parallel)
                    * model.get_head_size() * model.get_num_layers(parallel))
        ranks = parallel.tensor_parallel_size * parallel.pipeline_parallel_size
        return per_rank * ranks * torch.empty((), dtype=dtype).element_size()
    except (AttributeError, KeyError, TypeError, ValueError):
        return 0
