"""Conditional disaggregation on real engines: the plan reads the decode pool's cached prefix
(from its KV events) and the prompt length, and chooses local prefill when little is uncached."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import pytest
from client import post
from conftest import ingress_stats, metric_sum
from shapes import APP_NAME, BLOCK_SIZE, COLOCATED_MODEL, LOCAL_PREFILL_BELOW_TOKENS, PD_MODEL

from pdserve.tiny_model import random_words, recall_prompt_from_words

PREFILL = f"{PD_MODEL}-prefill"
DECODE = f"{PD_MODEL}-decode"


@pytest.fixture(scope="module")
def tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def complete(client: httpx.Client, model: str, prompt: Any) -> Any:
    reply = post(client, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 8,
                                             "temperature": 0.0, "return_token_ids": True})
    assert reply.status == 200 and reply.token_ids and reply.text.strip(), reply.body
    return reply


def plans() -> dict[str, int]:
    return {k: v for k, v in ingress_stats()[PD_MODEL].items() if k.startswith("plan:")}


def decode_hits(token_ids: list[int]) -> int:
    from ray import serve

    hits = serve.get_app_handle(APP_NAME).prefix_hits.remote(PD_MODEL, "decode", token_ids)
    return max(hits.result().values(), default=0)


def test_short_prompt_prefills_on_the_decode_replica(client: httpx.Client) -> None:
    prefills = metric_sum(PREFILL, "vllm:request_success_total")
    before = plans()
    reply = complete(client, PD_MODEL, "the river and the stone")
    assert reply.usage["prompt_tokens"] < LOCAL_PREFILL_BELOW_TOKENS
    assert metric_sum(PREFILL, "vllm:request_success_total") == prefills  # no prefill call
    assert plans().get("plan:local:short_uncached", 0) == before.get(
        "plan:local:short_uncached", 0) + 1
    assert reply.token_ids == complete(client, COLOCATED_MODEL, "the river and the stone").token_ids


def test_prompt_already_cached_on_decode_is_not_sent_to_prefill_again(
    client: httpx.Client, tokenizer: Any
) -> None:
    words = random_words(random.Random(61), 140)
    ids = tokenizer.encode(recall_prompt_from_words(words, 20))
    full_blocks = (len(ids) - 4) // BLOCK_SIZE
    ids = ids[: full_blocks * BLOCK_SIZE + 4]  # 4 tokens past a block boundary
    prefills = metric_sum(PREFILL, "vllm:request_success_total")
    before = plans()

    first = complete(client, PD_MODEL, ids)  # fresh: disaggregated, decode pulls over NIXL
    assert metric_sum(PREFILL, "vllm:request_success_total") == prefills + 1
    assert plans().get("plan:remote:disaggregated", 0) == before.get(
        "plan:remote:disaggregated", 0) + 1

    # The decode engine caches the pulled blocks and says so in its KV events.
    deadline = time.monotonic() + 15
    while decode_hits(ids) < full_blocks:
        assert time.monotonic() < deadline, "decode engine's blocks never reached the index"
        time.sleep(0.2)
    hits_before = metric_sum(DECODE, "vllm:prefix_cache_hits_total")

    again = complete(client, PD_MODEL, ids)  # 4 uncached tokens < 16: local, from the cache
    assert metric_sum(PREFILL, "vllm:request_success_total") == prefills + 1
    assert plans().get("plan:local:short_uncached", 0) == before.get(
        "plan:local:short_uncached", 0) + 1
    reused = metric_sum(DECODE, "vllm:prefix_cache_hits_total") - hits_before
    assert reused == full_blocks * BLOCK_SIZE, reused
    assert again.token_ids == first.token_ids
