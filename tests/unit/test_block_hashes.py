"""The ingress computes the block hashes the engine computes (vLLM's own engine-side path)."""

from __future__ import annotations

import pytest
from vllm.lora.request import LoRARequest
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils
from vllm.v1.request import Request

from pdserve.routing.block_hashes import BlockHasher, external_hash


@pytest.mark.parametrize("algorithm", ["sha256", "sha256_cbor"])
def test_router_hashes_equal_the_engine_request_block_hashes(algorithm: str) -> None:
    hash_fn = get_hash_fn_by_name(algorithm)
    kv_cache_utils.init_none_hash(hash_fn)  # what an engine core does at start-up
    tokens = [(i * 7919) % 500 + 3 for i in range(100)]
    request = Request("r", tokens, SamplingParams(max_tokens=1), None,
                      block_hasher=kv_cache_utils.get_request_block_hasher(16, hash_fn))
    engine = [kv_cache_utils.maybe_convert_block_hash(h) for h in request.block_hashes]
    ours = BlockHasher(16, algorithm)(tokens)
    assert len(ours) == 100 // 16 == len(engine)
    assert list(ours) == engine


def test_a_cache_salt_changes_every_block_as_the_engine_salts_it() -> None:
    hash_fn = get_hash_fn_by_name("sha256")
    kv_cache_utils.init_none_hash(hash_fn)
    tokens = [(i * 7919) % 500 + 3 for i in range(64)]
    request = Request("r", tokens, SamplingParams(max_tokens=1), None, cache_salt="tenant-a",
                      block_hasher=kv_cache_utils.get_request_block_hasher(16, hash_fn))
    engine = [kv_cache_utils.maybe_convert_block_hash(h) for h in request.block_hashes]
    hasher = BlockHasher(16)
    assert list(hasher(tokens, "tenant-a")) == engine
    plain, other = hasher(tokens), hasher(tokens, "tenant-b")
    assert all(a != b != c for a, b, c in zip(engine, plain, other, strict=True))


@pytest.mark.parametrize("salt", [None, "tenant-a"])
def test_an_adapter_keys_every_block_by_its_name_and_path_as_the_engine_does(
        salt: str | None) -> None:
    hash_fn = get_hash_fn_by_name("sha256")
    kv_cache_utils.init_none_hash(hash_fn)
    tokens = [(i * 7919) % 500 + 3 for i in range(64)]
    adapter = LoRARequest("sql", 1, "/adapters/sql")
    request = Request("r", tokens, SamplingParams(max_tokens=1), None, cache_salt=salt,
                      lora_request=adapter,
                      block_hasher=kv_cache_utils.get_request_block_hasher(16, hash_fn))
    engine = [kv_cache_utils.maybe_convert_block_hash(h) for h in request.block_hashes]
    hasher = BlockHasher(16)
    assert list(hasher(tokens, salt, adapter)) == engine
    moved = LoRARequest("sql", 1, "/elsewhere/sql")
    base, elsewhere = hasher(tokens, salt), hasher(tokens, salt, moved)
    for a, b, c in zip(engine, base, elsewhere, strict=True):  # pairwise different
        assert len({a, b, c}) == 3


def test_only_full_blocks_are_hashed_and_prefixes_share_hashes() -> None:
    hasher = BlockHasher(4)
    assert hasher([1, 2, 3]) == ()
    long = hasher([1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert len(long) == 2
    assert hasher([1, 2, 3, 4, 9, 9, 9, 9])[0] == long[0]
    assert hasher([1, 2, 3, 4, 9, 9, 9, 9])[1] != long[1]


def test_event_hashes_normalise_to_the_low_64_bits() -> None:
    raw = bytes(range(32))
    assert external_hash(raw) == int.from_bytes(raw, "big") & (2**64 - 1)
    assert external_hash(2**70 + 5) == 5


def test_xxhash_without_a_pinned_seed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    with pytest.raises(ValueError, match="PYTHONHASHSEED"):
        BlockHasher(16, "xxhash")
