"""Prompt block hashes exactly as vLLM's prefix cache computes them, with vLLM's own functions.

vLLM chains `hash_block_tokens(hash_fn, parent, block_tokens, extra_keys)` over full blocks,
starting from a root hash derived from a seed: `PYTHONHASHSEED` if set, else a fixed default
for the cryptographic algorithms (`sha256`, `sha256_cbor`). Its KV events carry the low 64
bits as an int. The router agrees with an engine only with the same block size, algorithm and
seed; `xxhash` without a pinned `PYTHONHASHSEED` uses a random seed per process, which no
router can match, so it is refused here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from vllm.lora.request import LoRARequest
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core.kv_cache_utils import hash_block_tokens, resolve_none_hash_seed

_LOW_64 = (1 << 64) - 1


def external_hash(block_hash: bytes | int) -> int:
    """The low 64 bits as an int, whichever form an event carried (bytes or int)."""
    if isinstance(block_hash, int):
        return block_hash & _LOW_64
    return int.from_bytes(block_hash, byteorder="big") & _LOW_64


class BlockHasher:
    """Hashes a prompt's full blocks once, at the ingress."""

    def __init__(self, block_size: int, algorithm: str = "sha256") -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.algorithm = algorithm
        self._hash_fn = get_hash_fn_by_name(algorithm)
        if algorithm.startswith("xxhash") and os.getenv("PYTHONHASHSEED") is None:
            raise ValueError(
                f"prefix_caching_hash_algo {algorithm!r} seeds its block hashes randomly per "
                "process unless PYTHONHASHSEED is set: set it to one value for the whole "
                "cluster (Ray runtime_env env_vars) or use sha256"
            )
        self._root = self._hash_fn(resolve_none_hash_seed(self._hash_fn))

    def __call__(self, token_ids: Sequence[int], cache_salt: str | None = None,
                 adapter: LoRARequest | None = None) -> tuple[int, ...]:
        """64-bit hashes of every full block of `token_ids`, in order, with vLLM's extra keys:
        a LoRA `adapter` enters every block's hash by its name and path (the request's own
        `LoRARequest`'s, whatever path the engine loaded it from), a `cache_salt` the first
        block's (so every later block differs too)."""
        hashes: list[int] = []
        parent = self._root
        size = self.block_size
        lora = (("lora", adapter.lora_name, adapter.lora_path),) if adapter else ()
        first = (*lora, ("cache_salt", cache_salt)) if cache_salt else lora
        for start in range(0, len(token_ids) - size + 1, size):
            extra = (first if start == 0 else lora) or None
            parent = hash_block_tokens(self._hash_fn, parent, token_ids[start : start + size],
                                       extra)
            hashes.append(external_hash(parent))
        return tuple(hashes)
