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
from conftest import (
    MAX_TOKENS,
    busiest_processes,
    deployment,
    ingress_stats,
    metric_sum,
    replicas_of,
    routing_state,
)
from lora_cases import LoraCase, lora_cases
from shapes import ADAPTERS, APP_NAME, BLOCK_SIZE, COLOCATED_MODEL, PD_MODEL, adapter_name

PULLED = "vllm:prompt_tokens_by_source_total"
COLOCATED_POOL = f"{COLOCATED_MODEL}-colocated"
#: an adapter loaded at run time (the `shifted` weights under another name)
LATE = adapter_name(COLOCATED_MODEL, "late")


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
    """...and the routers know it (the engines' routing stats), to prefer replicas holding
    a request's adapter."""
    for model, roles in ((PD_MODEL, ("prefill", "decode")), (COLOCATED_MODEL, ("colocated",))):
        expected = sorted(adapter_name(model, a) for a in ADAPTERS)
        for role in roles:
            pool = f"{model}-{role}"
            for replica in replicas_of(pool):
                loaded = deployment(pool).loaded_adapters.remote(replica=replica).result()
                assert loaded == expected, (pool, replica, loaded)
            label, want = f"{model}/{role}", dict.fromkeys(replicas_of(pool), expected)
            wait_for(lambda at=label, w=want: routing_state()[at]["adapters"] == w, 15,
                     f"the routers of {label} to learn its engines' adapters")


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


def loaded_on(replica: str) -> list[str]:
    return deployment(COLOCATED_POOL).loaded_adapters.remote(replica=replica).result()


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)
    return value


def test_run_time_adapter_calls_are_checked(client: httpx.Client, model_dir: str) -> None:
    def load(**body: Any) -> httpx.Response:
        return client.post("/v1/load_lora_adapter", json=body)

    not_an_adapter = load(lora_name="tiny-colo-broken", lora_path=model_dir,
                          model=COLOCATED_MODEL)
    assert not_an_adapter.status_code == 400, not_an_adapter.text
    assert "could not be loaded" in not_an_adapter.json()["error"]["message"]
    assert "Traceback" not in not_an_adapter.text
    taken = load(lora_name=PD_MODEL, lora_path="pdserve://tiny/shifted", model=COLOCATED_MODEL)
    assert taken.status_code == 400 and "already served" in taken.text
    unknown = load(lora_name="x", lora_path="pdserve://tiny/nothing", model=COLOCATED_MODEL)
    assert unknown.status_code == 400 and "unknown adapter" in unknown.text
    no_model = load(lora_name="x", lora_path="pdserve://tiny/shifted", model="nope")
    assert no_model.status_code == 404
    extra = load(lora_name="x", lora_path="pdserve://tiny/shifted", load_inplace=True)
    assert extra.status_code == 400, extra.text
    declared = client.post("/v1/unload_lora_adapter",
                           json={"lora_name": adapter_name(PD_MODEL, ADAPTERS[0])})
    assert declared.status_code == 400 and "declared in the config" in declared.text
    ids = {card["id"] for card in client.get("/v1/models").json()["data"]}
    assert "tiny-colo-broken" not in ids and "x" not in ids
    expected = sorted(adapter_name(COLOCATED_MODEL, a) for a in ADAPTERS)
    for replica in replicas_of(COLOCATED_POOL):  # nothing behind: no name, no stray id
        assert loaded_on(replica) == expected, replica


@pytest.mark.disruptive
def test_an_adapter_loaded_at_run_time_is_served_by_every_engine_and_a_replacement(
    client: httpx.Client, bare_lora: dict[LoraCase, list[int]]
) -> None:
    import ray

    (case, bare_ids) = next((c, ids) for c, ids in bare_lora.items()
                            if c.kind == "completion" and c.adapter == "shifted")
    loaded = client.post("/v1/load_lora_adapter", json={
        "lora_name": LATE, "lora_path": "pdserve://tiny/shifted", "model": COLOCATED_MODEL})
    assert loaded.status_code == 200, loaded.text
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert cards[LATE]["parent"] == COLOCATED_MODEL
    body = {"model": LATE, "prompt": case.text, "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "return_token_ids": True}
    reply = post(client, "/v1/completions", body)
    assert reply.status == 200 and reply.token_ids == bare_ids, (reply.body, bare_ids)
    for replica in replicas_of(COLOCATED_POOL):
        assert LATE in loaded_on(replica), replica
    wait_for(lambda: all(LATE in held for held in routing_state()[
        f"{COLOCATED_MODEL}/colocated"]["adapters"].values()), 15, "routers to learn of it")

    # a replica started later loads it from the app's registry, before any request names it
    survivors = replicas_of(COLOCATED_POOL)
    victim = survivors.pop()
    actor = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("SERVE_REPLICA::") and a["name"].endswith(victim))
    ray.kill(ray.get_actor(actor, namespace="serve"), no_restart=True)
    wait_for(lambda: victim not in replicas_of(COLOCATED_POOL), 60, "the victim dropped")
    try:
        (fresh,) = wait_for(lambda: set(replicas_of(COLOCATED_POOL)) - {*survivors, victim},
                            600, "a replacement replica")
    except AssertionError:
        raise AssertionError(busiest_processes()) from None
    wait_for(lambda: LATE in loaded_on(fresh), 60, "the replacement to load the adapter")
    for _ in range(2):  # (either replica may answer: both hold it)
        again = post(client, "/v1/completions", body)
        assert again.status == 200 and again.token_ids == bare_ids, again.body

    unloaded = client.post("/v1/unload_lora_adapter", json={"lora_name": LATE})
    assert unloaded.status_code == 200, unloaded.text
    gone = client.post("/v1/completions", json=body)
    assert gone.status_code == 404, gone.text
    assert LATE not in {card["id"] for card in client.get("/v1/models").json()["data"]}
    expected = sorted(adapter_name(COLOCATED_MODEL, a) for a in ADAPTERS)
    for replica in replicas_of(COLOCATED_POOL):  # every engine dropped it (no stray id either)
        wait_for(lambda r=replica: loaded_on(r) == expected, 30, f"{replica} to unload")
    again = client.post("/v1/unload_lora_adapter", json={"lora_name": LATE})
    assert again.status_code == 404, again.text
