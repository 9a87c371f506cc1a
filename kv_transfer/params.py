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
    """Bytes of one KV block across all layers of a plain attention model (K and V, each
    block_size x kv_heads x head_size per layer, in the cache's dtype): what pulling a block
    moves. 0 when the config does not say (then spans report blocks only)."""
    try:
        import torch
        from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE

        model, cache = vllm_config.model_config, vllm_config.cache_config
        parallel = vllm_config.parallel_config
        dtype = (model.dtype if cache.cache_dtype == "auto"
                 else STR_DTYPE_TO_TORCH_DTYPE[cache.cache_dtype])
        per_layer = 2 * cache.block_size * model.get_num_kv_heads(parallel) * model.get_head_size()
        itemsize = torch.empty((), dtype=dtype).element_size()
        return per_layer * model.get_num_layers(parallel) * itemsize
    except (AttributeError, KeyError, TypeError):
        return 0
