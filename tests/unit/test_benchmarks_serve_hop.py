"""The Serve hop probe's arithmetic (per-round medians, the median over rounds with min–max, the
report's tables) and its host measures, which fork a real echo child that must end."""

from __future__ import annotations

import multiprocessing

import psutil
import pytest

from pdserve.benchmarks.serve_hop import (
    WARM_UP,
    Call,
    Row,
    host_row,
    main,
    markdown,
    medians,
    summary,
)

META = {"run_name": "r", "command": "c", "date": "d", "git_revision": "g", "calls": 40,
        "rounds": 2, "machine": {"cpu_count": 2, "cpu_affinity": 2, "cpu_model": "x",
                                 "memory_gib": 1.0, "sched_autogroup_enabled": True}}


def test_medians_per_measure_and_the_way_back_per_call() -> None:
    """`back` is the median of each call's first item − reach, not a difference of medians
    (here 1.0, where the medians would give 4.0 − 2.0)."""
    calls = [Call(1.0, 2.0, 3.0), Call(2.0, 4.0, 9.0), Call(9.0, 10.0, 11.0)]
    assert medians(calls) == {"reach": 2.0, "back": 1.0, "first": 4.0, "end": 9.0}


def test_summary_is_the_median_over_rounds_with_min_and_max_per_setting() -> None:
    rows = [Row("bare", "serve-unary", 0.0, 1, {"first": 2.0, "end": 2.0}),
            Row("bare", "serve-unary", 0.0, 2, {"first": 4.0, "end": 3.0}),
            Row("bare", "serve-unary", 0.0, 3, {"first": 3.0, "end": 7.0}),
            Row("bare", "serve-unary", 20.0, 1, {"first": 9.0, "end": 9.0})]
    table = summary(rows)
    assert table[("bare", "serve-unary", 0.0)] == {"first": (3.0, 2.0, 4.0),
                                                   "end": (3.0, 2.0, 7.0)}
    assert table[("bare", "serve-unary", 20.0)] == {"first": (9.0, 9.0, 9.0),
                                                    "end": (9.0, 9.0, 9.0)}


def test_report_has_a_table_per_phase_and_the_host_measures() -> None:
    rows = [Row("host", "host", 20.0, 1, {"pipe round trip": 50.0, "python work": 280.0}),
            Row("bare", "ray-actor", 20.0, 1,
                {"first": 2.1, "end": 2.1, "reach": 1.5, "back": 0.6}),
            Row("beside pdserve", "serve-stream", 0.0, 1, {"first": 1.9, "end": 2.7})]
    text = markdown(META, rows)
    assert "## Calls, bare (ms)" in text and "## Calls, beside pdserve (ms)" in text
    assert ("| ray-actor | 20 ms | 1.50 (1.50–1.50) | 0.60 (0.60–0.60) | 2.10 (2.10–2.10) | "
            "2.10 (2.10–2.10) |") in text
    assert "| serve-stream | 0 ms | — | — | 1.90 (1.90–1.90) | 2.70 (2.70–2.70) |" in text
    assert "| pipe round trip | 20 ms | 50.0 (50.0–50.0) |" in text
    assert text.index("## Calls, bare") < text.index("## The host alone")


def _host_row(queue: multiprocessing.Queue) -> None:
    row = host_row(WARM_UP + 3, 0.0)
    queue.put((row, [c.pid for c in psutil.Process().children() if c.is_running()
                     and c.status() != psutil.STATUS_ZOMBIE]))


def test_host_row_times_a_pipe_round_trip_and_its_echo_child_ends() -> None:
    """In a process of its own, so that an echo child left waiting (its pipe never closed)
    hangs that process and fails this test instead of the session; once `host_row` returns,
    no child of that process may be left."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    probe = ctx.Process(target=_host_row, args=(queue,))
    probe.start()
    probe.join(timeout=60)
    if probe.is_alive():
        probe.kill()
        pytest.fail("host_row did not return: its echo child never saw its pipe close")
    row, children = queue.get(timeout=5)
    assert set(row) == {"pipe round trip", "python work"}
    assert all(value > 0 for value in row.values())
    assert children == []


@pytest.mark.parametrize("flags", [["--calls", str(WARM_UP)], ["--rounds", "0"],
                                   ["--idle-ms", "0"], ["--idle-ms", "-5"]])
def test_settings_that_measure_nothing_are_refused_before_ray_starts(
        flags: list[str], tmp_path) -> None:
    with pytest.raises(SystemExit) as refused:
        main([*flags, "--out", str(tmp_path / "out")])
    assert refused.value.code == 2
    assert not (tmp_path / "out").exists()
