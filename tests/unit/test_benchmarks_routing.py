"""Routing-benchmark traces and the oracle bound (pure)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tqdm import tqdm

from pdserve.benchmarks.routing_bench import (
    drive,
    head_to_head,
    main,
    serve_config,
    session_starts,
    table,
    think_times,
)
from pdserve.benchmarks.routing_workloads import (
    Observed,
    Session,
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


def test_think_times_are_seeded_per_session_with_the_asked_mean() -> None:
    chat = Session(["a"] * 2001, session_id="chat-1")
    pauses = think_times(chat, 2.0, seed=7)
    assert len(pauses) == 2000 and pauses == think_times(chat, 2.0, seed=7)
    assert 1.8 < sum(pauses) / len(pauses) < 2.2
    assert pauses != think_times(Session(chat.turns, session_id="chat-2"), 2.0, seed=7)
    assert pauses != think_times(chat, 2.0, seed=8)
    assert think_times(chat, 0.0, seed=7) == [0.0] * 2000


class _Answers(BaseHTTPRequestHandler):
    """A streamed completion of one token; records when each session's request came."""

    arrivals: dict[str, list[float]] = {}
    hold_s: dict[str, float] = {}  # a session whose answers take this long

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        session = self.headers["x-session-id"]
        self.arrivals.setdefault(session, []).append(time.monotonic())
        time.sleep(self.hold_s.get(session, 0.0))
        chunk = {"choices": [{"text": " x", "token_ids": [5], "prompt_token_ids": [1, 2]}]}
        body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_drive_waits_each_sessions_think_time_between_its_turns() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        trace = [Session(["p", "q", "r"], session_id=f"s{i}") for i in range(2)]
        with tqdm(total=6, disable=True) as bar:
            records = asyncio.run(drive(f"http://127.0.0.1:{server.server_address[1]}", trace,
                                        2, 1, bar, think_s=0.2, seed=3))
    finally:
        server.shutdown()
    assert len(records) == 6
    # one pause is long enough (0.44 s) that turns sent without waiting would fail this
    assert max(p for s in trace for p in think_times(s, 0.2, 3)) > 0.3
    for session in trace:
        times = _Answers.arrivals[session.session_id]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(gap >= pause for gap, pause in zip(gaps, think_times(session, 0.2, 3),
                                                       strict=True))


def test_head_to_head_gives_same_round_ratios_against_the_rival() -> None:
    row = {"workload": "unique", "ttft_p99_ms": 400.0, "req_per_s": 2.0}
    rows = [{**row, "router": "rival", "round": 1, "ttft_p50_ms": 300.0, "ttft_mean_ms": 200.0},
            {**row, "router": "rival", "round": 2, "ttft_p50_ms": 100.0, "ttft_mean_ms": 200.0},
            {**row, "router": "mine", "round": 1, "ttft_p50_ms": 100.0, "ttft_mean_ms": 100.0},
            {**row, "router": "mine", "round": 2, "ttft_p50_ms": 200.0, "ttft_mean_ms": 400.0},
            {**row, "router": "mine", "round": 3, "ttft_p50_ms": 1.0}]  # no rival that round
    (line,) = [ln for ln in head_to_head(rows, "mine", "rival").splitlines() if "unique" in ln]
    assert line == ("| unique | 2 | 1.75x (0.50x–3.00x) | 1.25x (0.50x–2.00x) | 1.00x "
                    "(1.00x–1.00x) | 1.00x (1.00x–1.00x) |")
    assert head_to_head(rows, "mine", "absent") == ""


def test_render_writes_the_report_again_from_recorded_rows(tmp_path: Path) -> None:
    row = {"workload": "unique", "hit_rate": 0.0, "oracle_hit_rate": 0.0, "hit_vs_oracle": None,
           "ttft_p50_ms": 200.0, "ttft_p99_ms": 400.0, "req_per_s": 2.0, "round": 1}
    rows = [{**row, "router": "pow2"}, {**row, "router": "prefix_cache_affinity"},
            {**row, "router": "pdserve", "ttft_p50_ms": 100.0}]
    meta = {"command": "python -m pdserve.benchmarks.routing_bench --out x", "date": "then"}
    (tmp_path / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    assert main(["--out", str(tmp_path), "--render"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "`python -m pdserve.benchmarks.routing_bench --out x`" in text and "then" in text
    assert "| unique | pdserve | 1 |" in text and "| unique | 1 | 2.00x |" in text


@pytest.mark.parametrize("flag", ["--think-s", "--rate"])
@pytest.mark.parametrize("value", ["-1", "inf", "nan"])
def test_a_duration_or_rate_that_is_not_finite_and_non_negative_is_refused(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--out", str(tmp_path), flag, value])
    assert refused.value.code == 2 and flag in capsys.readouterr().err


def test_open_load_starts_sessions_at_seeded_poisson_times() -> None:
    assert session_starts(3, 0.0, seed=1) == [0.0, 0.0, 0.0]  # closed loop: all at once
    starts = session_starts(4000, 8.0, seed=1)
    assert starts == session_starts(4000, 8.0, seed=1) != session_starts(4000, 8.0, seed=2)
    gaps = [b - a for a, b in zip([0.0, *starts], starts, strict=False)]
    assert all(g > 0 for g in gaps) and 0.95 / 8 < sum(gaps) / len(gaps) < 1.05 / 8


def test_open_load_sends_each_session_at_its_time_whatever_is_still_running() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    trace = [Session(["p"], session_id=f"open{i}") for i in range(6)]
    _Answers.hold_s["open0"] = 2.0  # the first answer outlasts every later start
    starts = session_starts(6, 10.0, seed=4)
    assert starts[-1] < 1.0
    try:
        with tqdm(total=6, disable=True) as bar:
            began = time.monotonic()  # before `drive` starts its clock
            records = asyncio.run(drive(f"http://127.0.0.1:{server.server_address[1]}", trace,
                                        1, 1, bar, seed=4, rate=10.0))
    finally:
        server.shutdown()
        _Answers.hold_s.clear()
    assert len(records) == 6
    sent = [_Answers.arrivals[s.session_id][0] for s in trace]
    # each came no sooner than its start time, and every later one while `open0` still held
    # the one slot a closed loop of concurrency 1 would have
    assert all(at - began >= start for start, at in zip(starts, sent, strict=True))
    assert all(at < sent[0] + 1.5 for at in sent[1:])
