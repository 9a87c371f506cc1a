"""Traces: generated arrivals have the rate and burstiness asked for; files round-trip; a vLLM
benchmark result replays as the requests it sent; shared prefixes share tokens."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from pdserve.simulation import traces


def gaps(trace: list[traces.TraceRequest]) -> list[float]:
    times = [0.0] + [r.arrival_s for r in trace]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_poisson_and_bursty_arrivals() -> None:
    lengths = traces.fixed_lengths(100, 10)
    poisson = gaps(traces.poisson(4.0, 20_000, lengths, seed=1))
    bursty = gaps(traces.gamma(4.0, 20_000, lengths, burstiness=0.25, seed=1))
    for sample in (poisson, bursty):
        assert statistics.fmean(sample) == pytest.approx(0.25, rel=0.05)
    cv = statistics.stdev(bursty) / statistics.fmean(bursty)
    assert statistics.stdev(poisson) / statistics.fmean(poisson) == pytest.approx(1.0, abs=0.05)
    assert cv == pytest.approx(2.0, rel=0.1)


def test_diurnal_rate_peaks_in_the_first_half_of_its_period() -> None:
    trace = traces.diurnal(10.0, 1000.0, 1000.0, traces.fixed_lengths(10, 1), seed=2)
    first = sum(1 for r in trace if r.arrival_s < 500)
    assert len(trace) == pytest.approx(10_000, rel=0.05)
    # rate × (1 + 0.8 sin): the first half holds (1 + 1.6/π) / 2 ≈ 75% of the requests.
    assert first / len(trace) == pytest.approx(0.755, abs=0.02)


def test_jsonl_round_trip_and_bad_lines(tmp_path: Path) -> None:
    trace = [traces.TraceRequest(0.5, 600, 64, "doc", 512), traces.TraceRequest(0.1, 20, 5)]
    path = tmp_path / "t.jsonl"
    traces.write_jsonl(path, trace)
    assert traces.read(path) == sorted(trace, key=lambda r: r.arrival_s)
    path.write_text('{"arrival_s": 1, "prompt": 3}\n')
    with pytest.raises(ValueError, match="t.jsonl:1"):
        traces.read(path)


def test_a_vllm_benchmark_result_replays_its_requests(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"start_times": [10.5, 10.0, 11.0], "input_lens": [5, 6, 7],
                                "output_lens": [3, 2, 0], "errors": ["", "", "boom"],
                                "ttfts": [0.1, 0.1, 0]}))
    assert traces.read(path) == [traces.TraceRequest(0.0, 6, 2), traces.TraceRequest(0.5, 5, 3)]


def test_requests_naming_one_prefix_share_its_tokens() -> None:
    a = traces.TraceRequest(0, 100, 1, "p", 64).token_ids(0, 1000)
    b = traces.TraceRequest(0, 90, 1, "p", 64).token_ids(1, 1000)
    c = traces.TraceRequest(0, 100, 1, None).token_ids(2, 1000)
    assert len(a) == 100 and len(b) == 90
    assert a[:64] == b[:64] and a[64:74] != b[64:74] and a[:64] != c[:64]


def _tokenizer() -> str:
    from pdserve.models import resolve_model

    return str(resolve_model("pdserve://tiny"))


def test_a_sharegpt_file_is_sampled_by_vllms_own_code_with_the_models_tokenizer(
        tmp_path) -> None:
    from vllm.tokenizers import get_tokenizer

    conversations = [{"conversations": [
        {"from": "human", "value": f"question {i}: " + "tell me about the sea " * (i + 2)},
        {"from": "gpt", "value": "the sea is large and deep " * (i + 3)}]} for i in range(8)]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(conversations))
    trace = traces.read_vllm_dataset(
        f"--dataset-name sharegpt --dataset-path {path} --num-prompts 6 --seed 1", _tokenizer())
    assert len(trace) == 6 and all(r.arrival_s == 0 for r in trace)
    tok = get_tokenizer(_tokenizer())
    by_prompt = {tuple(tok(c["conversations"][0]["value"]).input_ids):
                 len(tok(c["conversations"][1]["value"]).input_ids) for c in conversations}
    for r in trace:  # each request: a prompt of the file, its answer's length as output
        assert by_prompt[r.prompt_ids] == r.output_tokens
        assert r.prompt_tokens == len(r.prompt_ids)
        assert r.token_ids(0, 100) == list(r.prompt_ids)
    traces.write_jsonl(tmp_path / "trace.jsonl", trace)  # kept with its prompts' tokens
    assert traces.read_jsonl(tmp_path / "trace.jsonl") == trace


def test_a_dataset_without_times_gets_generated_arrivals_and_bad_options_are_named() -> None:
    requests = traces.read_vllm_dataset(
        "--dataset-name random --random-input-len 40 --random-output-len 5 --num-prompts 4",
        _tokenizer())
    times = traces.poisson(2.0, 10, traces.fixed_lengths(1, 1), seed=0)
    trace = traces.with_arrivals(requests, times)
    assert [r.arrival_s for r in trace] == [t.arrival_s for t in times]
    assert [r.prompt_ids for r in trace[:4]] == [r.prompt_ids for r in trace[4:8]]  # cycled
    with pytest.raises(ValueError, match="--not-an-option"):
        traces.read_vllm_dataset("--dataset-name random --not-an-option 3", _tokenizer())


def test_multiturn_sessions_grow_their_own_prompts_in_order() -> None:
    trace = traces.multiturn(sessions_per_s=2.0, sessions=6, turns=4, first_tokens=100,
                             turn_tokens=20, output_tokens=8, think_s=3.0, vocab=512, seed=1)
    assert len(trace) == 24
    assert [r.arrival_s for r in trace] == sorted(r.arrival_s for r in trace)
    assert all(10 <= t < 502 for r in trace for t in r.prompt_ids)
    firsts = [r for r in trace if r.prompt_tokens == 120]
    assert len(firsts) == 6  # one first turn per session, 100 + 20 tokens
    for first in firsts:  # each later turn extends its session's previous prompt by 8 + 20
        turns = [first]
        for _ in range(3):
            longer = [r for r in trace if r.prompt_tokens == turns[-1].prompt_tokens + 28
                      and r.prompt_ids[:turns[-1].prompt_tokens] == turns[-1].prompt_ids]
            assert len(longer) == 1
            assert longer[0].arrival_s > turns[-1].arrival_s
            turns.append(longer[0])
    assert len({r.prompt_ids[:120] for r in firsts}) == 6  # sessions share nothing
    with pytest.raises(ValueError, match="think_s"):
        traces.multiturn(sessions_per_s=1.0, sessions=1, turns=2, first_tokens=10,
                         turn_tokens=5, output_tokens=4, think_s=0, vocab=512)
