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
