"""Splitting the graph's CPU into per-request and per-token parts from concurrency-1 runs."""

from __future__ import annotations

import pytest

from pdserve.simulation.calibration import split_cpu


def test_runs_of_different_output_lengths_split_request_and_token_cpu() -> None:
    # 0.05 s per request + 0.002 s per token: 24 requests of 32 tokens, 12 of 256.
    runs = [(24, 24 * 32, 24 * 0.05 + 24 * 32 * 0.002),
            (12, 12 * 256, 12 * 0.05 + 12 * 256 * 0.002)]
    per_request, per_token = split_cpu(runs)
    assert per_request == pytest.approx(0.05) and per_token == pytest.approx(0.002)


def test_one_output_length_puts_everything_on_the_request() -> None:
    assert split_cpu([(10, 320, 2.0), (20, 640, 4.4)]) == pytest.approx((0.21, 0.0))
    assert split_cpu([]) == (0.0, 0.0)
