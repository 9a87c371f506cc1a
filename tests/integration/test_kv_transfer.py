"""The decode engine pulls the prompt's KV over NIXL, and falls back to recompute safely."""

from __future__ import annotations

import random
import time

import httpx
from client import post
from conftest import deployment, ingress_stats, metric_sum, replicas_of
from shapes import COLOCATED_MODEL, MAX_NUM_BATCHED_TOKENS, PD_MODEL, PREFILL_TIMEOUT_S

from pdserve.tiny_model import WORDS, random_words, recall_prompt_from_words

EXTERNAL = "external_kv_transfer"


def completion(model: str, prompt: str, max_tokens: int = 12, **extra: object) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "return_token_ids": True, **extra}


def fresh_prompt(seed: int, n_words: int = 120) -> str:
    return recall_prompt_from_words(random_words(random.Random(seed), n_words), 15)


def fallbacks() -> int:
    stats = ingress_stats()[PD_MODEL]
    return sum(v for k, v in stats.items() if k.startswith("fallback:"))


def test_pd_request_pulls_kv_from_the_prefill_engine_instead_of_recomputing(
    client: httpx.Client,
) -> None:
    prefill_calls = metric_sum(f"{PD_MODEL}-prefill", "vllm:request_success_total")
    pulled = metric_sum(f"{PD_MODEL}-decode", "vllm:prompt_tokens_by_source_total", source=EXTERNAL)
    fallbacks_before = fallbacks()

    reply = post(client, "/v1/completions", completion(PD_MODEL, fresh_prompt(seed=901)))

    assert reply.status == 200 and reply.text.strip(), reply.body
    prompt_tokens = reply.usage["prompt_tokens"]
    assert metric_sum(f"{PD_MODEL}-prefill", "vllm:request_success_total") == prefill_calls + 1
    pulled_now = metric_sum(
        f"{PD_MODEL}-decode", "vllm:prompt_tokens_by_source_total", source=EXTERNAL
    )
    # NIXL moves whole blocks; the decode engine computes at most the last partial block itself.
    assert prompt_tokens - 32 < pulled_now - pulled <= prompt_tokens, (prompt_tokens, pulled_now)
    assert fallbacks() == fallbacks_before


def test_changing_one_early_token_changes_the_greedy_continuation(client: httpx.Client) -> None:
    """Negative control: the output depends on KV far back in the prompt, so the equality
    tests would catch a transfer that moved garbage. The prompt (~330 tokens) is longer than
    one prefill batch, so it is also chunked."""
    words = random_words(random.Random(77), 130)
    cue = 20
    changed = list(words)
    changed[cue] = next(w for w in WORDS if w not in words)
    original = post(client, "/v1/completions",
                    completion(PD_MODEL, recall_prompt_from_words(words, cue), 8))
    edited = post(client, "/v1/completions",
                  completion(PD_MODEL, recall_prompt_from_words(changed, cue), 8))
    assert original.status == edited.status == 200
    assert original.usage["prompt_tokens"] > MAX_NUM_BATCHED_TOKENS
    # The model copies the span from its first occurrence, 110 words back ...
    assert original.text.startswith(" " + words[cue]), (original.text, words[cue:cue + 3])
    assert edited.text.startswith(" " + changed[cue]), (edited.text, changed[cue:cue + 3])
    # ... so one edited word there changes the continuation.
    assert original.token_ids[0] != edited.token_ids[0]


def test_failed_prefill_is_recomputed_on_the_decode_engine(client: httpx.Client) -> None:
    prompt = fresh_prompt(seed=902)
    expected = post(client, "/v1/completions", completion(COLOCATED_MODEL, prompt))
    before = ingress_stats()[PD_MODEL].get("fallback:error", 0)
    pulled = metric_sum(f"{PD_MODEL}-decode", "vllm:prompt_tokens_by_source_total", source=EXTERNAL)

    reply = post(client, "/v1/completions", completion(
        PD_MODEL, prompt, vllm_xargs={"pdserve_fail_prefill": 1}))

    assert reply.status == 200, reply.body
    assert reply.token_ids == expected.token_ids and reply.token_ids
    assert ingress_stats()[PD_MODEL].get("fallback:error", 0) == before + 1
    assert metric_sum(f"{PD_MODEL}-decode", "vllm:prompt_tokens_by_source_total",
                      source=EXTERNAL) == pulled, "nothing may be pulled on the fallback path"


def test_prefill_past_its_deadline_falls_back_to_local_prefill(client: httpx.Client) -> None:
    prompt = fresh_prompt(seed=903)
    expected = post(client, "/v1/completions", completion(COLOCATED_MODEL, prompt))
    before = ingress_stats()[PD_MODEL].get("fallback:timeout", 0)

    reply = post(client, "/v1/completions", completion(
        PD_MODEL, prompt, vllm_xargs={"pdserve_prefill_delay_s": PREFILL_TIMEOUT_S + 4}))

    assert reply.status == 200, reply.body
    assert reply.token_ids == expected.token_ids and reply.token_ids
    assert ingress_stats()[PD_MODEL].get("fallback:timeout", 0) == before + 1


def test_a_prefill_no_decode_will_pull_is_freed_at_once_not_at_lease_end(
    client: httpx.Client, model_dir: str
) -> None:
    """The release path a lost decode replica takes: a decode engine admits a pre-aborted
    request carrying the prefill's transfer params (vLLM's
    `notify_kv_transfer_request_rejected`), and its connector tells the prefill engine to free
    the blocks. Pins that vLLM behaviour: without it the KV stays pinned for the lease (30 s)."""
    from transformers import AutoTokenizer
    from vllm.sampling_params import SamplingParams

    from pdserve.prefill.request import PrefillRequest

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.encode(fresh_prompt(seed=904))
    prefill, decode = deployment(f"{PD_MODEL}-prefill"), deployment(f"{PD_MODEL}-decode")
    (prefill_replica,) = replicas_of(f"{PD_MODEL}-prefill")

    def prefill_free() -> bool:
        state = prefill.drained.remote(replica=prefill_replica).result()
        return state["all_kv_blocks_free"] and state["unfinished_requests"] == 0

    result = prefill.prefill.remote(PrefillRequest(
        "pinned-904-prefill", {"type": "token", "prompt_token_ids": ids},
        SamplingParams(max_tokens=4))).result()
    assert not prefill_free(), "the prefill engine should hold the KV for its decoder"
    started = time.monotonic()
    decode.release_kv.remote("pinned-904-release", result.kv_transfer_params).result()
    while not prefill_free():
        assert time.monotonic() - started < 10, "KV still pinned: the release did not reach it"
        time.sleep(0.2)
