"""Report tables and ratios computed from fake vllm.benchmarks.serve result dicts."""

import json
from pathlib import Path

import pytest

from pdserve.benchmarks import report


def fake_result(scale: float, failed: int = 0) -> dict:
    return {
        "completed": 64 - failed, "failed": failed, "duration": 10.0 / scale,
        "request_throughput": 6.4 * scale, "output_throughput": 204.8 * scale,
        "request_goodput": 6.0 * scale,
        "p50_ttft_ms": 100.0 / scale, "p99_ttft_ms": 300.0 / scale,
        "p50_itl_ms": 10.0 / scale, "p99_itl_ms": 40.0 / scale,
        "mean_tpot_ms": 10.5 / scale, "p50_tpot_ms": 11.0 / scale, "p99_tpot_ms": 20.0 / scale,
        "errors": ["", "Traceback...\nClientError: boom"] if failed else [""],
        "ttfts": [0.1] * 64,
    }  # fmt: skip


def row(system: str, workload: str, result: dict | None) -> dict:
    summary = report.summarize(result) if result else None
    return {"system": system, "workload": workload, "summary": summary,
            "status": "ok" if result else "error", "error": None if result else "boom",
            "other_cpu_s": 1.5, "step_wall_s": 20.0}  # fmt: skip


ROWS = [
    row("vllm", "random", fake_result(1.0)),
    row("pd", "random", fake_result(2.0, failed=1)),
    row("vllm", "prefix_repetition", fake_result(1.0)),
    row("pd", "prefix_repetition", None),
    row("colocated", "random", fake_result(0.5)),
]


def test_summarize_keeps_scalars_and_distinct_errors() -> None:
    s = report.summarize(fake_result(1.0, failed=2))
    assert s["request_throughput"] == pytest.approx(6.4) and s["failed"] == 2
    assert s["error_samples"] == ["ClientError: boom"]
    assert "ttfts" not in s and s["p99_e2el_ms"] is None


def test_ratios_against_vllm_same_workload() -> None:
    r = report.ratios(ROWS)
    assert r[("pd", "random")]["request_throughput"] == pytest.approx(2.0)
    assert r[("pd", "random")]["p50_ttft_ms"] == pytest.approx(0.5)
    assert r[("colocated", "random")]["output_throughput"] == pytest.approx(0.5)
    assert r[("vllm", "random")]["request_goodput"] == pytest.approx(1.0)
    assert ("pd", "prefix_repetition") not in r  # failed step: no ratio
    assert "failed" not in r[("pd", "random")]


def test_ratio_undefined_without_baseline_or_zero() -> None:
    assert report.ratios([row("pd", "random", fake_result(1.0))]) == {}
    zero = fake_result(1.0) | {"request_goodput": 0.0}
    r = report.ratios([row("vllm", "random", zero), row("pd", "random", fake_result(1.0))])
    assert r[("pd", "random")]["request_goodput"] is None


def test_no_ratio_against_untimeable_latency() -> None:
    """A baseline ITL of ~0 ms means tokens arrived in bursts: a ratio would be noise."""
    burst = fake_result(1.0) | {"p50_itl_ms": 0.01}
    r = report.ratios([row("vllm", "random", burst), row("pd", "random", fake_result(1.0))])
    assert r[("pd", "random")]["p50_itl_ms"] is None
    assert r[("pd", "random")]["p99_itl_ms"] == pytest.approx(1.0)


def test_results_table() -> None:
    table = report.results_table(ROWS).splitlines()
    assert table[0].startswith("| workload | system | req/s | out tok/s | TTFT p50 ms")
    assert len(table) == 2 + len(ROWS)
    pd_random = next(line for line in table if line.startswith("| random | pd |"))
    assert "| 12.80 | 409.60 | 50.00 |" in pd_random and pd_random.endswith("| 1 | 1.5 / 20.0 |")
    assert any("error: boom" in line for line in table)


def test_ratio_table_excludes_baseline() -> None:
    lines = report.ratio_table(ROWS).splitlines()
    assert len(lines) == 2 + 2  # pd/random and colocated/random
    assert any(line.startswith("| random | pd | 2.00× | 2.00× | 0.50×") for line in lines)
    assert not any("| vllm |" in line for line in lines)


def test_jsonable_replaces_infinity() -> None:
    assert report.jsonable({"rate": float("inf"), "t": (1, 2.5)}) == {"rate": "inf", "t": [1, 2.5]}


def test_write_report_files(tmp_path: Path) -> None:
    meta = report.run_metadata("python -m pdserve.benchmarks.run --systems vllm", tmp_path)
    systems = {"vllm": {"command": "x", "engine_kwargs": {"dtype": "float32"}}}
    meta |= {"run_name": "t", "load": {"request_rate": float("inf")}, "preload": [],
             "systems": systems}  # fmt: skip
    report.write_report(tmp_path, meta, ROWS)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["command"].endswith("--systems vllm") and data["machine"]["cpu_count"]
    assert data["versions"]["ray"] and len(data["results"]) == len(ROWS)
    assert data["ratios_vs_vllm"]["pd/random"]["request_throughput"] == pytest.approx(2.0)
    md = (tmp_path / "report.md").read_text()
    assert "## Ratios vs `vllm`" in md and '"dtype": "float32"' in md
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_burst_share_counts_gaps_below_what_a_client_can_time() -> None:
    from pdserve.benchmarks import report

    result = {"itls": [[0.012, 0.0001, 0.0002, 0.011], [0.45, 0.00001]]}
    assert report.burst_itl_pct(result) == 50.0
    assert report.burst_itl_pct({"itls": []}) is None
    assert report.summarize(result)["burst_itl_pct"] == 50.0


def test_the_revision_says_when_tracked_files_differ_from_it(tmp_path) -> None:
    import subprocess

    from pdserve.benchmarks.report import git_revision

    assert git_revision(tmp_path) is None  # not a work tree

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    clean = git_revision(tmp_path)
    assert clean and len(clean) == 40
    (tmp_path / "results.json").write_text("{}")  # untracked output: still clean
    assert git_revision(tmp_path) == clean
    recorded = tmp_path / "benchmarks" / "results" / "run" / "validation.md"
    recorded.parent.mkdir(parents=True)
    recorded.write_text("old\n")
    git("add", "benchmarks")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "r")
    clean = git_revision(tmp_path)
    recorded.write_text("compared again\n")  # a comparison rewriting a recorded report
    assert git_revision(tmp_path) == clean
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_revision(tmp_path) == clean + "+dirty"
