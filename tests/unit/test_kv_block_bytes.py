"""What a span says a KV pull moves: blocks offered, and bytes per block of the whole model."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from pdserve.kv_transfer.params import block_bytes, offered_blocks


def config(tp: int = 1, pp: int = 1, mla: bool = False,
           cache_dtype: str = "auto") -> SimpleNamespace:
    """vLLM's config surface `block_bytes` reads: per-rank heads and per-stage layers."""
    parallel = SimpleNamespace(tensor_parallel_size=tp, pipeline_parallel_size=pp)
    model = SimpleNamespace(
        dtype=torch.bfloat16, use_mla=mla, get_head_size=lambda: 64,
        get_num_kv_heads=lambda p: 8 // p.tensor_parallel_size,
        get_num_layers=lambda p: 12 // p.pipeline_parallel_size)
    cache = SimpleNamespace(block_size=16, cache_dtype=cache_dtype)
    return SimpleNamespace(model_config=model, cache_config=cache, parallel_config=parallel)


def test_a_block_is_k_and_v_of_every_layer_and_head_across_all_ranks() -> None:
    whole = 2 * 16 * 8 * 64 * 12 * 2  # K+V, block, heads, head size, layers, bf16
    assert block_bytes(config()) == whole
    assert block_bytes(config(tp=2, pp=2)) == whole  # each rank holds its share
    assert block_bytes(config(mla=True)) == whole // 2  # one latent cache
    assert block_bytes(config(cache_dtype="fp8")) == whole // 2
    assert block_bytes(SimpleNamespace()) == 0  # a config that does not say


def test_offered_blocks_count_the_first_group_of_nested_ids() -> None:
    assert offered_blocks({"remote_block_ids": [1, 2, 3]}) == 3
    assert offered_blocks({"remote_block_ids": [[1, 2], [3, 4]]}) == 2
    assert offered_blocks(None) == offered_blocks({"remote_block_ids": None}) == 0
