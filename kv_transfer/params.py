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
