"""vLLM's per-request timestamps as an engine span's timings."""

from __future__ import annotations

from types import SimpleNamespace

from pdserve.deployments.engine.host import engine_timings


def stats(**ts: float) -> SimpleNamespace:
    base = {"queued_ts": 10.0, "scheduled_ts": 0.0, "first_token_ts": 0.0, "last_token_ts": 0.0}
    return SimpleNamespace(metrics=SimpleNamespace(**{**base, **ts}))


def test_queue_prefill_and_decode_seconds_come_from_vllms_own_timestamps() -> None:
    assert engine_timings(stats(scheduled_ts=10.5, first_token_ts=11.0, last_token_ts=13.0)) == {
        "pdserve.engine.queued_s": 0.5, "pdserve.engine.to_first_token_s": 0.5,
        "pdserve.engine.decode_s": 2.0}
    assert engine_timings(stats(scheduled_ts=10.5)) == {"pdserve.engine.queued_s": 0.5}


def test_no_timings_without_stats_or_before_scheduling() -> None:
    assert engine_timings(None) == engine_timings(SimpleNamespace(metrics=None)) == {}
    assert engine_timings(stats()) == {}
