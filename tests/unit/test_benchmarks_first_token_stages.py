"""The first-token stages benchmark's reading of a trace: each point from the span edge it
names, vLLM's first token from its span's arrival plus its TTFT, and stretches in order."""

from __future__ import annotations

import pytest

from pdserve.benchmarks.first_token_stages import (
    PDSERVE_POINTS,
    VLLM_POINTS,
    Round,
    in_order,
    markdown,
    points,
    prompts,
    stretches,
)
from pdserve.benchmarks.otlp_sink import SpanRecord
from pdserve.tracing import FIRST_OUTPUT_EVENT

MS = 1_000_000


def span(name: str, start_ms: float, end_ms: float, span_id: str = "", parent: str = "",
         events: tuple[tuple[str, int], ...] = (), **attributes: float) -> SpanRecord:
    return SpanRecord("t" * 32, span_id or name, parent, name, attributes, {},
                      round(start_ms * MS), round(end_ms * MS), 0, events)


def pdserve_trace() -> list[SpanRecord]:
    return [
        span("POST /v1/completions", 1.0, 60.0),
        span("pdserve.prepare", 1.0, 2.5),
        span("pdserve.generate_call", 2.8, 55.0, events=((FIRST_OUTPUT_EVENT, 16 * MS),)),
        span("pdserve.colocated.engine", 4.9, 54.0, span_id="engine",
             events=((FIRST_OUTPUT_EVENT, round(14.7 * MS)),)),
        span("llm_request", 1.7, 53.0, parent="engine",
             **{"gen_ai.latency.time_to_first_token": 0.0127}),
    ]


def test_pdserve_points_come_from_their_span_edges_in_order() -> None:
    found = points(pdserve_trace(), 0, round(16.3 * MS))
    assert found is not None
    assert set(found) == set(PDSERVE_POINTS)
    assert list(PDSERVE_POINTS) == sorted(PDSERVE_POINTS, key=found.__getitem__)
    assert found["first token"] == round(1.7 * MS) + round(0.0127 * 1e9)  # arrival + TTFT
    assert found["prepared"] == round(2.5 * MS)  # the prepare span's end
    assert found["engine output"] == round(14.7 * MS)  # the engine span's event
    ms = stretches(found, PDSERVE_POINTS)
    assert ms["engine call → engine replica"] == pytest.approx(2.1)
    assert ms["engine output → ingress output"] == pytest.approx(1.3)
    # the stretches both systems have, alongside pdserve's own
    assert ms["sent → arrival"] == pytest.approx(1.7)
    assert ms["first token → received"] == pytest.approx(16.3 - 14.4)
    assert ms["sent → received"] == pytest.approx(16.3)
    consecutive = [k for k in ms if k.split(" → ") in
                   [[a, b] for a, b in zip(PDSERVE_POINTS, PDSERVE_POINTS[1:], strict=False)]]
    assert sum(ms[k] for k in consecutive) == pytest.approx(ms["sent → received"])


def test_plain_vllm_has_the_common_points_only_and_no_trace_no_points() -> None:
    vllm = [span("llm_request", 1.3, 50.0, parent="client",
                 **{"gen_ai.latency.time_to_first_token": 0.0095})]
    found = points(vllm, 0, 11 * MS)
    assert found is not None and set(found) == set(VLLM_POINTS)
    assert stretches(found, VLLM_POINTS)["arrival → first token"] == pytest.approx(9.5)
    assert points([span("POST /v1/completions", 1.0, 2.0)], 0, MS) is None  # no vLLM span
    # an engine span that is not vLLM's parent is not taken for pdserve's engine
    other = [*vllm, span("pdserve.prefill.engine", 2.0, 3.0, span_id="x")]
    assert "engine replica" not in (points(other, 0, 11 * MS) or {})


def test_the_report_compares_the_common_stretches() -> None:
    rounds = [Round("vllm", 1, 60, 60, {"sent → received": 11.0, "sent → arrival": 1.3}, 8.6),
              Round("pdserve", 1, 60, 59, {"sent → received": 16.0, "sent → arrival": 1.7,
                                           "ingress → arrival": 0.6}, 8.5)]
    machine = {"cpu_count": 2, "cpu_affinity": 2, "cpu_model": "cpu", "memory_gib": 24}
    meta = {"run_name": "x", "command": "c", "date": "d", "machine": machine, "git_revision": "g",
            "requests": 60, "prompt_tokens": 16, "output_tokens": 8, "rounds": 1}
    text = markdown(meta, rounds)
    assert "| stretch | vllm | pdserve | pdserve − vllm |" in text
    assert "| sent → received | 11.00 (11.00–11.00) | 16.00 (16.00–16.00) | +5.00 |" in text
    assert "vllm 60/60, pdserve 59/60" in text
    # the difference is pdserve's minus plain vLLM's whichever order they ran in
    assert "| +5.00 |" in markdown(meta, rounds[::-1])
    assert "| ingress → arrival | 0.60 (0.60–0.60) |" in text
    assert "## vllm, stage by stage" not in text  # its stretches are all common ones


def test_a_request_counts_only_with_every_point_in_order() -> None:
    found = points(pdserve_trace(), 0, round(16.3 * MS))
    assert found is not None and in_order(found, PDSERVE_POINTS)
    assert not in_order({**found, "engine output": found["first token"] - 1}, PDSERVE_POINTS)
    assert not in_order({k: v for k, v in found.items() if k != "prepared"}, PDSERVE_POINTS)


def test_warm_up_prompts_share_no_block_with_measured_ones() -> None:
    measured, warm_up = prompts(0, 60, 512, seed=1), prompts(60, 10, 512, seed=1)
    firsts = [tuple(p[:32]) for p in measured + warm_up]
    assert len(set(firsts)) == 70  # no two share their first block, so no prefix-cache hit
    assert all(3 <= t < 503 for p in measured for t in p)
    with pytest.raises(ValueError):
        prompts(495, 10, 16, seed=1)
