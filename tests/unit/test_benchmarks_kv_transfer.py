"""KV-transfer benchmark: geometry, descriptor layouts and the report's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

from pdserve.benchmarks.kv_transfer_bench import kv_geometry
from pdserve.benchmarks.kv_transfer_probes import piece_bytes
from pdserve.benchmarks.kv_transfer_summary import markdown, percentile, spread, summarize

MB = 1_000_000


def pd_round(round_index: int, variant: str, transfer_s: list[float], first_s: list[float],
             idle: float) -> dict:
    return {"round": round_index, "name": f"pd:{variant}", "variant": variant,
            "lengths": {"100": {"bytes": [2 * MB] * len(transfer_s), "transfer_s": transfer_s,
                                "pull_first_token_s": first_s,
                                "descriptors": [6] * len(transfer_s)}},
            "idle_cores": {"prefill": idle, "decode": idle},
            "nice": {"prefill": {"1": 0}, "decode": {"2": 0}}, "probe_nice": 0}


def raw_rounds() -> list[dict]:
    size = str(2 * MB)
    raw = []
    for r, scale in enumerate((1.0, 2.0, 4.0)):
        raw += [
            {"round": r, "name": "memcpy", "gbps": {size: [8.0 * scale, 10.0 * scale]},
             "gbps_4k": {size: [6.0 * scale]}, "probe_nice": 0},
            {"round": r, "name": "raw_nixl:4k", "probe_nice": 0, "gbps": {
                "one": {size: {"wall": [1.0], "telemetry": [2.0 * scale]}}}},
            {"round": r, "name": "raw_nixl", "probe_nice": 0, "gbps": {
                "one": {size: {"wall": [1.0], "telemetry": [5.0 * scale]}},
                "per_layer": {size: {"wall": [1.0], "telemetry": [4.0 * scale]}}}},
            # 2 MB in 1 ms = 2 GB/s (x scale)
            pd_round(r, "quiet-0", [0.001 / scale] * 3, [0.010, 0.020, 0.030], 1.0),
            pd_round(r, "quiet-1000", [0.001 / scale] * 3, [0.011, 0.022, 0.033], 0.02),
        ]
    raw.append({"round": 0, "name": "idle:embed", "variant": "embed",
                "idle_cores": {"embed": 0.01}, "nice": {"embed": {"3": 0}}})
    raw.append({"round": 1, "name": "pd:vllm", "error": "probe pd_path failed"})
    return raw


def test_bench_model_geometry_gives_kv_bytes_per_token(tmp_path: Path) -> None:
    config = {"num_hidden_layers": 6, "num_attention_heads": 5, "num_key_value_heads": 5,
              "head_dim": 64, "hidden_size": 320}
    (tmp_path / "config.json").write_text(json.dumps(config))
    geometry = kv_geometry(str(tmp_path), block_size=32)
    assert geometry == {"layers": 6, "bytes_per_token": 2 * 6 * 5 * 64 * 4,
                        "block_bytes": 32 * 5 * 64 * 4}


def test_descriptor_layouts_cut_a_transfer_into_pieces() -> None:
    assert piece_bytes(600, {"pieces": 1}) == 600
    assert piece_bytes(600, {"pieces": 6}) == 100
    assert piece_bytes(600, {"bytes": 40}) == 40


def test_spread_and_nearest_rank_percentile() -> None:
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert spread([]) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


def test_summary_takes_round_medians_then_their_median_and_range() -> None:
    summary = summarize(raw_rounds(), lengths=[100], latency_length=100,
                        bytes_per_token=20_000)
    rates = summary["rates_gbps"]
    assert rates["memcpy"]["100"] == {"median": 18.0, "min": 9.0, "max": 36.0}
    assert rates["nixl:per_layer"]["100"]["median"] == 8.0
    assert rates["memcpy:4k"]["100"]["median"] == 12.0  # small-page rows beside the huge ones
    assert rates["nixl:one:4k"]["100"]["median"] == 4.0
    assert list(rates)[:5] == ["memcpy", "memcpy:4k", "nixl:one", "nixl:per_layer",
                               "nixl:one:4k"]
    assert rates["pd:quiet-0"]["100"] == {"median": 4.0, "min": 2.0, "max": 8.0}
    latency = summary["latency_ms"]["pd:quiet-1000"]
    assert round(latency["first_token_ms_p50"]["median"], 6) == 22.0
    assert round(latency["first_token_ms_p99"]["median"], 6) == 33.0
    assert summary["idle_cores"]["decode (quiet-1000)"]["median"] == 0.02
    assert summary["idle_cores"]["embed"]["median"] == 0.01
    assert summary["nice"]["decode"] == [0]
    assert summary["errors"] == ["round 1 pd:vllm: probe pd_path failed"]


def test_report_states_shares_of_memcpy_and_raw_nixl_and_latency_against_busy_poll() -> None:
    summary = summarize(raw_rounds(), lengths=[100], latency_length=100,
                        bytes_per_token=20_000)
    text = markdown({"command": "x", "args": {"rounds": 3, "idle": 15, "settle": 5}}, summary)
    assert "| 100 | pd:quiet-0 | 22% | 50% | 40% |" in text  # 4 / 18, 4 / 8, 4 / 10
    assert "| pd:quiet-1000 | " in text and "| 110% | 110% |" in text  # p50, p99 vs quiet-0
    assert "round 1 pd:vllm: probe pd_path failed" in text
