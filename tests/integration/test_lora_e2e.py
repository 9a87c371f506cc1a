"""Multi-LoRA through the graph (real engines): two adapters and the base model on one PD model
and one colocated model, each adapter declared in YAML (`lora_modules`).

The test adapters (`pdserve.tiny_lora`) change a prompt's KV as well as its answer, so a PD
decode that ran with KV computed without the adapter (or with the other one) would answer as
no bare engine does.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from client import post
from conftest import MAX_TOKENS, deployment, ingress_stats, metric_sum, replicas_of
from lora_cases import LoraCase, lora_cases
from shapes import ADAPTERS, APP_NAME, BLOCK_SIZE, COLOCATED_MODEL, PD_MODEL, adapter_name

PULLED = "vllm:prompt_tokens_by_source_total"


def served(model: str, adapter: str | None) -> str:
    return model if adapter is None else adapter_name(model, adapter)


def ask(client: httpx.Client, case: LoraCase, model: str) -> Any:
    body: dict[str, Any] = {"model": served(model, case.adapter), "max_tokens": MAX_TOKENS,
                            "temperature": 0.0, "return_token_ids": True}
    if case.kind == "completion":
        return post(client, "/v1/completions", {**body, "prompt": case.text})
    return post(client, "/v1/chat/completions",
                {**body, "messages": [{"role": "user", "content": case.text}]})


def test_every_engine_loaded_the_adapters_of_its_model(serve_app: str) -> None:
    for model, roles in ((PD_MODEL, ("prefill", "decode")), (COLOCATED_MODEL, ("colocated",))):
        expected = sorted(adapter_name(model, a) for a in ADAPTERS)
        for role in roles:
            pool = f"{model}-{role}"
            for replica in replicas_of(pool):
                loaded = deployment(pool).loaded_adapters.remote(replica=replica).result()
                assert loaded == expected, (pool, replica, loaded)


def test_each_adapter_answers_as_a_bare_engine_with_it_on_pd_and_colocated(
    client: httpx.Client, bare_lora: dict[LoraCase, list[int]]
) -> None:
    pulled_before = metric_sum(f"{PD_MODEL}-decode", PULLED, source="external_kv_transfer")
    fallbacks_before = ingress_stats()[PD_MODEL]
    answers: dict[tuple[str, str | None], tuple[int, ...]] = {}
    for case, bare_ids in bare_lora.items():
        pd, colocated = ask(client, case, PD_MODEL), ask(client, case, COLOCATED_MODEL)
        assert pd.status == colocated.status == 200, (case, pd.body, colocated.body)
        assert len(bare_ids) == MAX_TOKENS
        assert pd.token_ids == colocated.token_ids == bare_ids, (
            case.kind, case.adapter, pd.token_ids, colocated.token_ids, bare_ids)
        assert pd.body["model"] == served(PD_MODEL, case.adapter)
        answers[(case.text, case.adapter)] = tuple(bare_ids)
    for text in {case.text for case in bare_lora}:  # three different answers per prompt
        per_adapter = [answers[(text, adapter)] for adapter in (None, *ADAPTERS)]
        assert len(set(per_adapter)) == len(per_adapter), per_adapter
    # every PD answer came from KV the decode engine pulled (no local prefill, no fallback)
    after = ingress_stats()[PD_MODEL]
    assert {k: v for k, v in after.items() if k.startswith("fallback")} == {
        k: v for k, v in fallbacks_before.items() if k.startswith("fallback")}
    pulled = metric_sum(f"{PD_MODEL}-decode", PULLED, source="external_kv_transfer")
    assert pulled - pulled_before >= len(bare_lora) * BLOCK_SIZE, pulled - pulled_before


def prefix_hits(token_ids: list[int], adapter: str | None) -> dict[str, int]:
    from ray import serve

    return serve.get_app_handle(APP_NAME).prefix_hits.remote(
        COLOCATED_MODEL, "colocated", token_ids, None, adapter).result()


def test_an_adapters_blocks_are_indexed_apart_from_the_base_models(
    client: httpx.Client, model_dir: str
) -> None:
    """The router hashes a prompt per adapter exactly as the engine does (vLLM mixes the
    adapter's name and path into every block): the blocks an adapter's request stored are
    found under that adapter's hashes only."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    (case, *_) = [c for c in lora_cases() if c.kind == "completion" and c.adapter]
    ids = tokenizer.encode(f"lora index {time.time_ns()} {case.text}")  # no block seen before
    blocks = len(ids) // BLOCK_SIZE
    reply = post(client, "/v1/completions", {
        "model": adapter_name(COLOCATED_MODEL, case.adapter), "prompt": ids, "max_tokens": 1})
    assert reply.status == 200, reply.body
    adapter = adapter_name(COLOCATED_MODEL, case.adapter)
    other = adapter_name(COLOCATED_MODEL, next(a for a in ADAPTERS if a != case.adapter))
    deadline = time.monotonic() + 15
    while not prefix_hits(ids, adapter) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(prefix_hits(ids, adapter).values()) == [blocks]
    assert prefix_hits(ids, None) == {} == prefix_hits(ids, other)


def test_models_lists_each_adapter_with_its_base_model(client: httpx.Client) -> None:
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    for model in (PD_MODEL, COLOCATED_MODEL):
        for adapter in ADAPTERS:
            card = cards[adapter_name(model, adapter)]
            assert card["parent"] == model, card


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_an_unknown_adapter_is_404_naming_the_served_ones(client: httpx.Client,
                                                          path: str) -> None:
    body: dict[str, Any] = {"model": f"{PD_MODEL}-no-such-adapter", "max_tokens": 1}
    body |= ({"prompt": "the"} if path.endswith("/completions") and "chat" not in path
             else {"messages": [{"role": "user", "content": "the"}]})
    response = client.post(path, json=body)
    assert response.status_code == 404, response.text
    message = response.json()["error"]["message"]
    assert all(adapter_name(PD_MODEL, a) in message for a in ADAPTERS), message
