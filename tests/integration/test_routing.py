"""Prefix-aware routing on a real 2-engine colocated pool, proven by vLLM's own metrics.

The ingress hashes each prompt; the index is fed only by the engines' KV events. Greedy
output must not depend on where a request lands or what was cached.
"""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from client import Reply, post
from conftest import busiest_processes, deployment, metric_sum, replicas_of, routing_state
from shapes import APP_NAME, BLOCK_SIZE, COLOCATED_GPU_BLOCKS, COLOCATED_MODEL, PD_MODEL

from pdserve.tiny_model import random_words

POOL = f"{COLOCATED_MODEL}-colocated"
HITS = "vllm:prefix_cache_hits_total"


@pytest.fixture(scope="module")
def tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def prefix_hits(token_ids: list[int]) -> dict[str, int]:
    from ray import serve

    handle = serve.get_app_handle(APP_NAME)
    return handle.prefix_hits.remote(COLOCATED_MODEL, "colocated", token_ids).result()


def complete(client: httpx.Client, model: str, token_ids: list[int], max_tokens: int = 8,
             session: str | None = None) -> Reply:
    body = {"model": model, "prompt": token_ids, "max_tokens": max_tokens, "temperature": 0.0,
            "return_token_ids": True}
    if session is None:
        return post(client, "/v1/completions", body)
    response = client.post("/v1/completions", json=body, headers={"x-session-id": session})
    data = response.json()
    assert response.status_code == 200, data
    return Reply(200, data["choices"][0]["text"], data["choices"][0]["token_ids"], body=data)


class Group:
    """Requests sharing a long prefix (distinct words), each ending in its own recall cue,
    so the tiny model answers confidently and every suffix is unique."""

    def __init__(self, tokenizer: Any, seed: int, n_words: int = 90) -> None:
        self.words = random_words(random.Random(seed), n_words)
        self.prefix_text = " ".join(self.words)
        self.prefix_ids = tokenizer.encode(self.prefix_text)
        self.tokenizer = tokenizer

    def request(self, i: int) -> list[int]:
        cue = " ".join(self.words[5 * i + 3 : 5 * i + 13])
        ids = self.tokenizer.encode(f"{self.prefix_text} {cue}")
        assert ids[: len(self.prefix_ids)] == self.prefix_ids
        return ids

    @property
    def shared_blocks(self) -> int:
        return len(self.prefix_ids) // BLOCK_SIZE


def wait_for(check: Any, timeout_s: float = 15.0, what: str = "condition",
             diagnose: Any = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(f"timed out waiting for {what}{detail}")
        time.sleep(0.2)


def test_router_hashes_equal_the_hashes_in_the_engines_block_stored_events(
    client: httpx.Client, tokenizer: Any
) -> None:
    ids = Group(tokenizer, seed=11).request(0)
    full_blocks = len(ids) // BLOCK_SIZE
    assert complete(client, COLOCATED_MODEL, ids).token_ids
    hits = wait_for(lambda: prefix_hits(ids), what="BlockStored events")
    # Exactly one engine computed it; every full prompt block it cached matches our hashes.
    assert list(hits.values()) == [full_blocks], hits
    streams = routing_state()[f"{COLOCATED_MODEL}/colocated"]["streams"]
    (holder,) = hits
    assert streams[holder]["stored"] >= full_blocks
    assert not streams[holder]["block_size_mismatch"]
    assert_no_work_in_flight()


def assert_no_work_in_flight() -> None:
    """The router's in-flight bookkeeping (queue, pending blocks) empties when requests end."""
    wait_for(lambda: not any(routing_state()[f"{COLOCATED_MODEL}/colocated"]["in_flight"]
                             .values()), what="router in-flight count back to 0")


def test_groups_with_different_prefixes_land_on_the_replicas_that_hold_them(
    client: httpx.Client, tokenizer: Any
) -> None:
    a, b = Group(tokenizer, seed=21), Group(tokenizer, seed=22)
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Seed both prefixes; A is in flight (a long answer) when B is routed, so B goes to
        # the other, idle replica.
        first_a = pool.submit(complete, client, COLOCATED_MODEL, a.request(0), 400)
        wait_for(lambda: sum(routing_state()[f"{COLOCATED_MODEL}/colocated"]["in_flight"]
                             .values()) > 0, what="A in flight")
        first_b = pool.submit(complete, client, COLOCATED_MODEL, b.request(0), 8)
        first_a.result(), first_b.result()
        holders_a = wait_for(lambda: prefix_hits(a.prefix_ids), what="A indexed")
        holders_b = wait_for(lambda: prefix_hits(b.prefix_ids), what="B indexed")
        (replica_a,), (replica_b,) = holders_a, holders_b
        assert replica_a != replica_b, "both prefixes went to one replica"

        before = {r: metric_sum(POOL, HITS, replica=r) for r in (replica_a, replica_b)}
        n = 4
        jobs = [(g, i) for i in range(1, n + 1) for g in (a, b)]  # interleaved, concurrent
        replies = list(pool.map(
            lambda job: complete(client, COLOCATED_MODEL, job[0].request(job[1])), jobs))
    after = {r: metric_sum(POOL, HITS, replica=r) for r in (replica_a, replica_b)}

    # vLLM's own counters: each replica reused its group's prefix for all n requests.
    assert after[replica_a] - before[replica_a] >= n * a.shared_blocks * BLOCK_SIZE, (
        before, after)
    assert after[replica_b] - before[replica_b] >= n * b.shared_blocks * BLOCK_SIZE, (
        before, after)

    assert_no_work_in_flight()
    # Where a request ran (and what it found cached) does not change greedy output.
    for (group, i), reply in zip(jobs, replies, strict=True):
        reference = complete(client, PD_MODEL, group.request(i))
        assert reply.token_ids and reply.text.strip()
        assert reply.token_ids == reference.token_ids, (i, reply.text, reference.text)


def test_forced_eviction_reaches_the_index_through_block_removed(
    client: httpx.Client, tokenizer: Any
) -> None:
    victim = Group(tokenizer, seed=31).request(0)
    complete(client, COLOCATED_MODEL, victim, session="evict")
    (holder,) = wait_for(lambda: prefix_hits(victim), what="victim indexed")
    removed_before = routing_state()[f"{COLOCATED_MODEL}/colocated"]["streams"][holder]["removed"]

    # Same session → same replica; together they need far more blocks than it has.
    fillers = [Group(tokenizer, seed=100 + k).request(0) for k in range(24)]
    assert sum(len(f) for f in fillers) // BLOCK_SIZE > 2 * COLOCATED_GPU_BLOCKS
    for ids in fillers:
        complete(client, COLOCATED_MODEL, ids, session="evict")
    done = time.monotonic()

    wait_for(lambda: prefix_hits(victim).get(holder, 0) < len(victim) // BLOCK_SIZE,
             what="victim blocks dropped from the index")
    forgotten_after_s = time.monotonic() - done
    streams = routing_state()[f"{COLOCATED_MODEL}/colocated"]["streams"][holder]
    assert streams["removed"] > removed_before  # learned from BlockRemoved, not guessed
    assert streams["resyncs"] == 0
    assert forgotten_after_s < 10, forgotten_after_s


def test_each_new_session_starts_on_a_replica_where_fewest_sessions_live(
    client: httpx.Client, tokenizer: Any
) -> None:
    """At rest every queue reads 0, so without `session_spread` a new chat lands by chance;
    with it, on the replica serving the fewest live sessions (any of them on a tie)."""
    state = f"{COLOCATED_MODEL}/colocated"
    replicas = replicas_of(POOL)
    assert len(replicas) == 2
    run = uuid.uuid4().int % 10**9  # new prompts and sessions even on a reused cluster
    uneven = 0
    for i in range(10):
        assert_no_work_in_flight()
        before = routing_state()[state]["live_sessions"]
        ids = Group(tokenizer, seed=run + i).request(0)
        complete(client, COLOCATED_MODEL, ids, session=f"spread-{run}-{i}")
        (holder,) = wait_for(lambda ids=ids: prefix_hits(ids), what="session indexed")
        counts = [before.get(r, 0) for r in replicas]
        uneven += counts[0] != counts[1]
        assert before.get(holder, 0) == min(counts), (i, before, holder)
        after = routing_state()[state]["live_sessions"]
        assert after.get(holder, 0) == before.get(holder, 0) + 1, (before, after)
    # Every other start finds the counts apart, where chance would pick the fuller replica
    # half the time: a router without the spread passes this about 1 time in 32.
    assert uneven >= 5


@pytest.mark.disruptive
def test_a_restarted_replica_starts_with_no_blocks_in_the_index(
    client: httpx.Client, tokenizer: Any
) -> None:
    import ray

    ids = Group(tokenizer, seed=41).request(0)
    complete(client, COLOCATED_MODEL, ids)
    (victim,) = wait_for(lambda: prefix_hits(ids), what="prompt indexed")
    survivors = set(replicas_of(POOL)) - {victim}
    actor_name = next(
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and a["name"].endswith(victim)
    )
    ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)

    wait_for(lambda: victim not in replicas_of(POOL), timeout_s=60, what="replica dropped")
    assert victim not in routing_state()[f"{COLOCATED_MODEL}/colocated"]["blocks"]
    assert prefix_hits(ids) == {}

    def stream_closed() -> bool:  # the event thread closes it at its next poll (20 ms)
        state = routing_state()[f"{COLOCATED_MODEL}/colocated"]
        return victim not in state["streams"] and victim not in state["blocks"]

    wait_for(stream_closed, timeout_s=5, what="the dropped replica's event stream closed")

    # Serve starts a replacement; it joins the index empty and then serves correctly.
    wait_for(lambda: len(replicas_of(POOL)) == 2, timeout_s=600, what="replacement replica",
             diagnose=busiest_processes)
    (fresh,) = set(replicas_of(POOL)) - survivors
    assert fresh != victim
    assert routing_state()[f"{COLOCATED_MODEL}/colocated"]["blocks"].get(fresh, 0) == 0
    assert deployment(POOL).health.remote(replica=fresh).result()
    assert complete(client, COLOCATED_MODEL, ids).token_ids
