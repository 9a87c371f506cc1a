"""KV transfer across nodes: UCX transport parsing, link arithmetic and the report's medians
(fake rounds; no root, namespaces or NIXL needed)."""

from __future__ import annotations

from typing import Any

from pdserve.benchmarks.kv_transfer_nodes import SETTINGS, link_delta, transports
from pdserve.benchmarks.kv_transfer_nodes_report import markdown, piece_size, summarize

MIB = 2**20

#: What UCX prints with UCX_PROTO_INFO=y (prefixes as in a real log), a write table first.
PROTO_LOG = """\
Triton is installed, but doesn't include CPU backend. Disabling Triton.
[1796457154.336425] [vm:21388:0]   +--------+-------------+-----------------------------------+
[1796457154.336425] [vm:21388:0]   | dst self cfg#0                                           |
[1796457154.336425] [vm:21388:0]   | remote memory write by ucp_put* from host memory to host |
[1796457154.336425] [vm:21388:0]   +--------+-------------+-----------------------------------+
[1796457154.336425] [vm:21388:0]   | Range  | Description |              Config               |
[1796457154.336425] [vm:21388:0]   | 0..inf | zero-copy   | posix/memory                      |
[1796457154.4] [vm:21388:0]   | remote memory read by ucp_get*(multi) into host memory from host |
[1796457154.4] [vm:21388:0]   +--------+-------------+-----------------------------------+
[1796457154.4] [vm:21388:0]   | Range  | Description |              Config               |
[1796457154.4] [vm:21388:0]   | 0..inf | software emulation | tcp/eth0                   |
[1796457154.5] [vm:21388:0]   | active message by ucp_am_send* from host memory |
[1796457154.5] [vm:21388:0]   |   1..65528 | zero-copy            | tcp/lo    |
"""


def fake_round(round_index: int, setting: str, scale: float, crossed: int) -> dict[str, Any]:
    """One setting's result: `one` runs at 2 GB/s × scale, per_block at 1 × scale; the source
    node (b for cross-node, else a) sent `crossed` bytes over its link."""
    source = "b" if setting.startswith("cross") else "a"
    link = {"a": {"received": 0, "sent": 0}, "b": {"received": 0, "sent": 0}}
    link[source]["sent"] = crossed
    link["a"]["received"] += crossed
    return {"round": round_index, "setting": setting, "moved_bytes": 100 * MIB,
            "gbps": {"one": {str(MIB): {"wall": [2.0 * scale, 1.0],
                                        "telemetry": [2.0 * scale, 2.0 * scale]}},
                     "per_block": {str(MIB): {"wall": [1.0], "telemetry": [1.0 * scale]}}},
            "link": link, "other_cpu_s": 10.0 * scale,
            "transports": {"reader": ["tcp/eth0 (software emulation)"], "source": []},
            "nice": {"source": 0, "reader": 0}}


def fake_raw() -> list[dict[str, Any]]:
    raw = []
    for r, scale in enumerate((1.0, 2.0, 4.0)):
        raw.append(fake_round(r, "same-node:default", 4 * scale, 0))
        raw.append(fake_round(r, "same-node:tcp", scale, 0))
        raw.append(fake_round(r, "cross-node:tcp", scale / 2, 102 * MIB))
    raw[-1] = {"round": 2, "setting": "cross-node:tcp", "error": "reader exit 1"}
    return raw


def test_transports_come_from_the_read_table_only() -> None:
    assert transports(PROTO_LOG) == ["tcp/eth0 (software emulation)"]
    assert transports("no tables here") == []


def test_link_delta_counts_each_nodes_bytes_both_ways() -> None:
    before = {"a": (100, 200), "b": (10, 20)}
    after = {"a": (1100, 250), "b": (60, 1020)}
    assert link_delta(before, after) == {"a": {"received": 1000, "sent": 50},
                                         "b": {"received": 50, "sent": 1000}}


def test_piece_size_follows_the_layouts() -> None:
    assert piece_size("one", 8 * MIB) == 8 * MIB
    assert piece_size("per_block", 8 * MIB) == 40960
    assert 8 * MIB // piece_size("per_block", 8 * MIB) == 204


def test_summary_takes_round_medians_then_their_median_and_range() -> None:
    summary = summarize(fake_raw(), SETTINGS)
    same = summary["settings"]["same-node:tcp"]
    assert same["gbps"]["one"][str(MIB)]["telemetry"] == {"median": 4.0, "min": 2.0, "max": 8.0}
    assert same["gbps"]["one"][str(MIB)]["wall"] == {"median": 2.5, "min": 1.5, "max": 4.5}
    assert same["sent_per_moved"] == {"median": 0.0, "min": 0.0, "max": 0.0}
    cross = summary["settings"]["cross-node:tcp"]
    assert cross["rounds"] == 2  # the failed round is listed, not averaged
    assert cross["gbps"]["per_block"][str(MIB)]["telemetry"] == {"median": 0.75, "min": 0.5,
                                                                 "max": 1.0}
    assert cross["sent_per_moved"]["median"] == 1.02
    assert cross["reader_link_received_bytes"]["median"] == 102 * MIB
    assert cross["transports"] == ["tcp/eth0 (software emulation)"]
    assert cross["nice"] == [0]
    assert summary["errors"] == ["round 2 cross-node:tcp: reader exit 1"]
    rows = summary["per_round"]
    assert len(rows) == 8
    assert rows[1] == {"round": 0, "setting": "same-node:tcp", "step_wall_s": None,
                       "other_cpu_s": 10.0, "gbps": {"one:1": 2.0, "per_block:1": 1.0}}


def test_report_compares_cross_node_with_same_node_and_shows_link_bytes() -> None:
    meta = {"command": "x", "date": "d", "git_revision": None,
            "machine": {"cpu_count": 2, "cpu_affinity": 2, "cpu_model": "cpu", "memory_gib": 1},
            "versions": {"nixl": "1"}, "args": {"rounds": 3, "reps": 2}}
    text = markdown(meta, summarize(fake_raw(), SETTINGS))
    # telemetry medians, one: cross 1.5 vs same-node tcp 4 and default 16; per_block: 0.75 vs
    # 2 and 8 (the failed round left out)
    assert "| one | 1 | 38% | 9% |" in text
    assert "| per_block | 1 | 38% | 9% |" in text
    assert "| cross-node:tcp | 104.9 | 107.0 | 107.0 | 1.020 (1.020–1.020) |" in text
    assert "round 2 cross-node:tcp: reader exit 1" in text
