"""PD output == colocated output == bare vLLM engine output, token for token (greedy)."""

from __future__ import annotations

import httpx
import pytest
from cases import Case
from client import post
from conftest import MAX_TOKENS, ingress_stats, metric_sum
from shapes import BLOCK_SIZE, COLOCATED_MODEL, MAX_NUM_BATCHED_TOKENS, PD_MODEL


def prompt_tokens(client: httpx.Client, case: Case) -> int:
    reply = post(client, case.path(), case.body(COLOCATED_MODEL, 1, stream=False))
    assert reply.status == 200, reply.body
    return reply.usage["prompt_tokens"]


def test_prompt_set_covers_the_engine_shapes(client: httpx.Client, cases: list[Case]) -> None:
    """1 token; under one block; many blocks; longer than one prefill batch (chunked)."""
    lengths = [prompt_tokens(client, case) for case in cases]
    assert len(cases) >= 20
    assert min(lengths) == 1
    assert any(1 < n < BLOCK_SIZE for n in lengths)
    assert any(4 * BLOCK_SIZE <= n <= MAX_NUM_BATCHED_TOKENS for n in lengths)
    assert any(n > MAX_NUM_BATCHED_TOKENS for n in lengths)
    assert {c.kind for c in cases} == {"completion", "chat"}
    assert {c.stream for c in cases} == {True, False}


def test_pd_output_matches_colocated_and_bare_engine_token_for_token(
    client: httpx.Client, cases: list[Case], bare_reference: list[list[int]]
) -> None:
    pulled_before = metric_sum(f"{PD_MODEL}-decode", "vllm:prompt_tokens_by_source_total",
                               source="external_kv_transfer")
    fallbacks_before = ingress_stats()[PD_MODEL]
    mismatches = []
    for case, bare_ids in zip(cases, bare_reference, strict=True):
        pd = post(client, case.path(), case.body(PD_MODEL, MAX_TOKENS))
        colocated = post(client, case.path(), case.body(COLOCATED_MODEL, MAX_TOKENS))
        assert pd.status == colocated.status == 200, (case.label, pd.body, colocated.body)
        assert len(bare_ids) == MAX_TOKENS, case.label
        assert pd.text.strip(), f"{case.label}: empty PD text"
        assert pd.usage and pd.usage["completion_tokens"] == MAX_TOKENS, (case.label, pd.usage)
        if not pd.token_ids == colocated.token_ids == bare_ids or pd.text != colocated.text:
            mismatches.append((case.label, pd.token_ids, colocated.token_ids, bare_ids))
    assert not mismatches, "\n".join(map(str, mismatches))
    # Equal tokens prove nothing if PD silently prefilled locally: require real KV pulls.
    fallbacks = {k: v for k, v in ingress_stats()[PD_MODEL].items() if k.startswith("fallback")}
    assert fallbacks == {k: v for k, v in fallbacks_before.items() if k.startswith("fallback")}
    pulled = metric_sum(f"{PD_MODEL}-decode", "vllm:prompt_tokens_by_source_total",
                        source="external_kv_transfer") - pulled_before
    assert pulled >= 10 * BLOCK_SIZE, pulled


@pytest.mark.parametrize("model", [PD_MODEL, COLOCATED_MODEL])
def test_parallel_samples_and_sampling_parameters_pass_through(
    client: httpx.Client, cases: list[Case], model: str
) -> None:
    """n, seed, top_p, stop and logprobs reach the engine (vLLM's own request conversion)."""
    case = cases[4]
    body = {**case.body(model, 8, stream=False), "n": 2, "temperature": 0.9, "top_p": 0.95,
            "seed": 7, "logprobs": 2}
    first, second = post(client, case.path(), body), post(client, case.path(), body)
    assert first.status == 200, first.body
    assert len(first.body["choices"]) == 2
    assert [c["token_ids"] for c in first.body["choices"]] == [
        c["token_ids"] for c in second.body["choices"]
    ], "same seed must give the same samples"
    assert first.body["choices"][0]["logprobs"] is not None
