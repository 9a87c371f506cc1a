"""Routing-benchmark traces and the oracle bound (pure)."""

from __future__ import annotations

from pdserve.benchmarks.routing_bench import serve_config, table
from pdserve.benchmarks.routing_workloads import (
    Observed,
    TraceSettings,
    groups_trace,
    multiturn_trace,
    oracle_hit_tokens,
    unique_trace,
)
from pdserve.routing.block_hashes import BlockHasher

HASH = BlockHasher(4)


def test_oracle_reuses_the_longest_block_aligned_prefix_seen_before() -> None:
    first = Observed(0.0, list(range(10)))
    same_prefix = Observed(1.0, list(range(9)) + [99, 98])  # shares 9 tokens = 2 full blocks
    unrelated = Observed(2.0, [7] * 12)
    assert oracle_hit_tokens([unrelated, same_prefix, first], 4, HASH) == [0, 8, 0]


def test_oracle_counts_generated_tokens_of_earlier_turns_and_keeps_the_last_token() -> None:
    turn1 = Observed(0.0, [1, 2, 3, 4, 5, 6], output_ids=[7, 8])
    turn2 = Observed(1.0, [1, 2, 3, 4, 5, 6, 7, 8, 9])  # 8 tokens seen before: 2 blocks
    exact_repeat = Observed(2.0, [1, 2, 3, 4, 5, 6, 7, 8])  # last token is always computed
    assert oracle_hit_tokens([turn1, turn2, exact_repeat], 4, HASH) == [0, 8, 4]


def test_traces_are_reproducible_and_shaped_as_asked() -> None:
    s = TraceSettings(groups=3, requests_per_group=2, sessions=2, turns=3, unique_requests=4)
    assert [x.turns for x in groups_trace(s)] == [x.turns for x in groups_trace(s)]
    assert len(groups_trace(s)) == 6 and len({x.group for x in groups_trace(s)}) == 3
    chats = multiturn_trace(s)
    assert len(chats) == 2 and all(len(c.turns) == 3 and c.session_id for c in chats)
    assert len({u.turns[0] for u in unique_trace(s)}) == 4


def test_only_the_router_differs_between_benchmark_configs() -> None:
    a = serve_config("m", 2, 100, {"request_router_class": "x:A"}, 2048)
    b = serve_config("m", 2, 100, {"request_router_class": "y:B"}, 2048)
    pool_a = a["applications"][0]["args"]["models"][0]["colocated"]
    pool_b = b["applications"][0]["args"]["models"][0]["colocated"]
    assert pool_a.pop("request_router_config") != pool_b.pop("request_router_config")
    assert a == b


def test_table_reports_ratios_against_power_of_two() -> None:
    row = {"workload": "groups", "hit_rate": 0.5, "oracle_hit_rate": 0.6, "hit_vs_oracle": 0.8,
           "ttft_p50_ms": 100.0, "ttft_p99_ms": 200.0, "req_per_s": 2.0}
    text = table([{**row, "router": "pow2"}, {**row, "router": "pdserve", "ttft_p50_ms": 50.0}])
    assert "| groups | pdserve | 1 |" in text and "2.00x" in text


def test_rounds_report_medians_of_same_round_ratios() -> None:
    row = {"workload": "groups", "hit_rate": 0.5, "oracle_hit_rate": 0.6, "hit_vs_oracle": 0.8,
           "ttft_p99_ms": 200.0, "req_per_s": 2.0}
    rows = [{**row, "router": "pow2", "round": 1, "ttft_p50_ms": 100.0},
            {**row, "router": "pow2", "round": 2, "ttft_p50_ms": 300.0},
            {**row, "router": "pow2", "round": 3, "ttft_p50_ms": 100.0},
            {**row, "router": "pdserve", "round": 1, "ttft_p50_ms": 50.0},   # 2x
            {**row, "router": "pdserve", "round": 2, "ttft_p50_ms": 100.0},  # 3x
            {**row, "router": "pdserve", "round": 3, "ttft_p50_ms": 100.0}]  # 1x
    (line,) = [ln for ln in table(rows).splitlines() if "| pdserve |" in ln]
    # medians over rounds with min–max; the speed-up is the median of same-round ratios (2x),
    # not the ratio of medians (100 / 100 = 1x)
    assert "| groups | pdserve | 3 |" in line and "| 100 (50–100) |" in line
    assert "| 2.00x (1.00x–3.00x) |" in line
