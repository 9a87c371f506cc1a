"""Many concurrent streams, and clients that leave mid-stream."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
from client import post
from conftest import metric_sum, routing_state, wait_drained, wait_routers_idle
from shapes import COLOCATED_MODEL, COLOCATED_REPLICAS, PD_MODEL

from pdserve.tiny_model import recall_prompt_text


def prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [recall_prompt_text(rng, rng.randint(10, 120), 5) for _ in range(count)]


async def stream_ids(http: httpx.AsyncClient, model: str, prompt: str) -> list[int]:
    body = {"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0.0,
            "stream": True, "return_token_ids": True}
    ids: list[int] = []
    async with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:]).get("choices", []):
                    ids.extend(choice.get("token_ids") or [])
    return ids


def test_32_concurrent_streams_complete_with_correct_output(
    client: httpx.Client, serve_app: str
) -> None:
    texts = prompts(32, seed=5)
    expected = []
    for text in texts:
        reply = post(client, "/v1/completions", {"model": COLOCATED_MODEL, "prompt": text,
                                                "max_tokens": 24, "temperature": 0.0,
                                                "return_token_ids": True})
        expected.append(reply.token_ids)

    async def run_all() -> list[list[int]]:
        async with httpx.AsyncClient(base_url=serve_app, timeout=600) as http:
            return await asyncio.gather(*(stream_ids(http, PD_MODEL, t) for t in texts))

    results = asyncio.run(run_all())
    assert all(len(ids) == 24 for ids in results)
    assert results == expected


def test_a_completion_of_several_prompts_routes_and_counts_each_prompt(
    client: httpx.Client, serve_app: str
) -> None:
    """A request's prompts are concurrent calls to one pool that share Ray's internal request
    id: each gets the replica chosen for it and counts in flight on it until it ends. (With
    Ray's matching by that id all but one prompt never got a replica, and the request hung.)
    Each prompt's answer is its answer alone."""
    texts = prompts(4, seed=11)
    for model, pool in ((COLOCATED_MODEL, "colocated"), (PD_MODEL, "decode")):
        alone = [post(client, "/v1/completions", {
            "model": model, "prompt": text, "max_tokens": 300, "temperature": 0.0,
            "ignore_eos": True, "return_token_ids": True}).token_ids for text in texts]
        body = {"model": model, "prompt": texts, "max_tokens": 300, "temperature": 0.0,
                "ignore_eos": True, "stream": True, "return_token_ids": True}
        ids: dict[int, list[int]] = {i: [] for i in range(len(texts))}
        counted: dict[str, int] | None = None
        with httpx.Client(base_url=serve_app, timeout=120) as http, \
                http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                for choice in json.loads(line[6:])["choices"]:
                    ids[choice["index"]].extend(choice.get("token_ids") or [])
                if counted is None and all(len(v) >= 8 for v in ids.values()):
                    counted = routing_state()[f"{model}/{pool}"]["in_flight"]
        assert [len(v) for v in ids.values()] == [300] * len(texts)
        assert list(ids.values()) == alone, model
        assert counted is not None and sum(counted.values()) == len(texts), (model, counted)
        if pool == "colocated":  # each counted where it runs: spread over the replicas
            assert len([n for n in counted.values() if n]) == COLOCATED_REPLICAS, counted
        assert not wait_routers_idle(), model


def test_beam_search_runs_its_beams_as_concurrent_calls_alike_on_pd_and_colocated(
        client: httpx.Client) -> None:
    """vLLM's beam search calls the engine once per beam and step, concurrently, within one
    request (calls sharing Ray's request id, as above): it completes, the same on both."""
    body = {"prompt": prompts(1, seed=12)[0], "max_tokens": 8, "use_beam_search": True,
            "n": 3, "temperature": 0.0}
    texts = {}
    for model in (PD_MODEL, COLOCATED_MODEL):
        reply = client.post("/v1/completions", json={**body, "model": model}, timeout=120)
        assert reply.status_code == 200, reply.text
        texts[model] = [c["text"] for c in reply.json()["choices"]]
    assert len(texts[PD_MODEL]) == 3 and texts[PD_MODEL] == texts[COLOCATED_MODEL], texts
    assert not wait_routers_idle()


def decoded_tokens() -> float:
    return metric_sum(f"{PD_MODEL}-decode", "vllm:generation_tokens_total")


def test_client_that_disconnects_mid_stream_frees_both_engines(serve_app: str) -> None:
    body = {"model": PD_MODEL, "prompt": prompts(1, seed=6)[0], "max_tokens": 900,
            "temperature": 0.0, "stream": True, "ignore_eos": True}
    decoded_before = decoded_tokens()
    chunks = 0
    with (
        httpx.Client(base_url=serve_app, timeout=120) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: "):
                chunks += 1
            if chunks >= 5:
                break  # leave mid-stream: the connection closes here
    assert chunks == 5
    # within seconds, not at the end of vLLM's 30 s KV lease
    states = wait_drained(timeout_s=15)
    decoded = decoded_tokens() - decoded_before
    # vLLM does not count client aborts in request_success_total; the tokens show it stopped.
    assert 5 <= decoded < 450, f"decode engine generated {decoded} of 900 tokens: not aborted"
    for state in states.values():
        assert state["unfinished_requests"] == 0 and state["all_kv_blocks_free"], states


def test_concurrent_requests_with_the_same_request_id_each_get_their_own_answer(
    client: httpx.Client, serve_app: str
) -> None:
    """vLLM aborts by the id a request was added with; with the client's id shared, one client
    leaving would abort the other's request too. Each engine request id is made unique."""
    texts = prompts(4, seed=11)
    expected = [post(client, "/v1/completions", {"model": PD_MODEL, "prompt": t,
                                                 "max_tokens": 24, "temperature": 0.0,
                                                 "return_token_ids": True}).token_ids
                for t in texts]
    headers = {"X-Request-Id": "same-id"}

    async def leave_early(http: httpx.AsyncClient) -> int:
        body = {"model": PD_MODEL, "prompt": texts[0], "max_tokens": 900, "ignore_eos": True,
                "temperature": 0.0, "stream": True}
        chunks = 0
        async with http.stream("POST", "/v1/completions", json=body, headers=headers) as r:
            async for line in r.aiter_lines():
                chunks += line.startswith("data: ")
                if chunks >= 3:
                    break  # this client leaves; the others with its id must not be aborted
        return chunks

    async def run_all() -> list[list[int]]:
        async with httpx.AsyncClient(base_url=serve_app, timeout=600,
                                     headers=headers) as http:
            results = await asyncio.gather(leave_early(http),
                                           *(stream_ids(http, PD_MODEL, t) for t in texts))
            return results[1:]

    assert asyncio.run(run_all()) == expected
