"""The report of the cross-host KV-transfer benchmark (`kv_transfer_nodes`): pure functions
from its raw rounds to report.json and report.md, so a report can be rebuilt from raw.json."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pdserve.benchmarks.kv_transfer_nodes import BLOCK_BYTES, LAYOUTS, SETTINGS, Setting

Spread = dict[str, float]


def spread(values: list[float]) -> Spread | None:
    """Median and range of per-round values (None without any)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(raw: list[dict[str, Any]], settings: Iterable[Setting] = SETTINGS
              ) -> dict[str, Any]:
    """Per setting: GB/s per layout and size (`wall`, `telemetry`; median over rounds of each
    round's median), the bytes moved and those the source's and reader's links counted, and
    the UCX transports seen; failed rounds are listed, not averaged."""
    out: dict[str, Any] = {"settings": {}, "errors": []}
    for setting in settings:
        rounds = [r for r in raw if r["setting"] == setting.name and "error" not in r]
        rates: dict[str, dict[str, dict[str, Spread | None]]] = {}
        for layout in sorted({layout for r in rounds for layout in r["gbps"]},
                             key=lambda name: (name not in LAYOUTS, name)):
            sizes = sorted({int(s) for r in rounds for s in r["gbps"][layout]})
            rates[layout] = {str(size): {clock: spread([
                statistics.median(r["gbps"][layout][str(size)][clock]) for r in rounds
                if str(size) in r["gbps"].get(layout, {})]) for clock in ("wall", "telemetry")}
                for size in sizes}
        moved = [r["moved_bytes"] for r in rounds]
        sent = [r["link"][setting.source_node]["sent"] for r in rounds]
        received = [r["link"][setting.reader_node]["received"] for r in rounds]
        out["settings"][setting.name] = {
            **asdict(setting), "rounds": len(rounds), "gbps": rates,
            "moved_bytes": spread(moved), "source_link_sent_bytes": spread(sent),
            "reader_link_received_bytes": spread(received),
            "sent_per_moved": spread([s / m for s, m in zip(sent, moved, strict=True) if m]),
            "transports": sorted({t for r in rounds for t in r["transports"].get("reader", [])}),
            "other_cpu_s": spread([r["other_cpu_s"] for r in rounds if "other_cpu_s" in r]),
            "nice": sorted({n for r in rounds for n in r.get("nice", {}).values()
                            if n is not None}),
        }
    out["errors"] = [f"round {r['round']} {r['setting']}: {r['error']}" for r in raw
                     if "error" in r]
    out["per_round"] = per_round(raw)
    return out


def per_round(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each round's own medians (telemetry GB/s per layout:MiB) with the CPU other work took
    meanwhile: shows whether a setting's spread came from a busy box."""
    rows = []
    for r in raw:
        if "error" in r:
            continue
        rates = {f"{layout}:{int(size) / 2**20:g}": statistics.median(v["telemetry"])
                 for layout, by_size in r["gbps"].items() for size, v in by_size.items()}
        rows.append({"round": r["round"], "setting": r["setting"], "gbps": rates,
                     "step_wall_s": r.get("step_wall_s"), "other_cpu_s": r.get("other_cpu_s")})
    return rows


def _cell(value: Spread | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return (f"{value['median']:.{digits}f} ({value['min']:.{digits}f}–"
            f"{value['max']:.{digits}f})")


def _mb(value: Spread | None) -> str:
    return "–" if value is None else f"{value['median'] / 1e6:.1f}"


def rate_table(summary: dict[str, Any], clock: str) -> list[str]:
    """GB/s by (layout, size) × setting, on one clock (`wall` or `telemetry`)."""
    table = summary["settings"]
    names = list(table)
    rows = sorted({(layout, int(size)) for s in table.values()
                   for layout, by_size in s["gbps"].items() for size in by_size},
                  key=lambda row: (row[0] not in LAYOUTS, row[0], row[1]))
    lines = ["| layout | MiB | descriptors | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for layout, size in rows:
        pieces = size // piece_size(layout, size)
        cells = [_cell(table[n]["gbps"].get(layout, {}).get(str(size), {}).get(clock))
                 for n in names]
        lines.append(f"| {layout} | {size / 2**20:g} | {pieces} | " + " | ".join(cells) + " |")
    return lines


def piece_size(layout: str, size: int) -> int:
    """Descriptor size of a known layout (whole transfer for an unknown one)."""
    spec = LAYOUTS.get(layout, {"pieces": 1})
    return size // spec["pieces"] if "pieces" in spec else spec["bytes"]


def ratio_table(summary: dict[str, Any], against: str = "same-node:tcp",
                of: str = "cross-node:tcp") -> list[str]:
    """`of` over `against` and over the first setting (NIXL telemetry GB/s, medians)."""
    table = summary["settings"]
    refs = [name for name in (against, next(iter(table), against)) if name in table]
    refs = list(dict.fromkeys(refs))
    if of not in table or not refs:
        return []
    lines = ["| layout | MiB | " + " | ".join(f"{of} / {r}" for r in refs) + " |",
             "|---|---|" + "---|" * len(refs)]
    for layout, by_size in table[of]["gbps"].items():
        for size, clocks in by_size.items():
            cells = []
            for ref in refs:
                base = table[ref]["gbps"].get(layout, {}).get(size, {}).get("telemetry")
                mine = clocks.get("telemetry")
                cells.append("–" if not base or not mine or not base["median"]
                             else f"{mine['median'] / base['median']:.0%}")
            lines.append(f"| {layout} | {int(size) / 2**20:g} | " + " | ".join(cells) + " |")
    return lines


def markdown(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    """The human-readable report."""
    from pdserve.benchmarks.report import machine_line

    args = meta.get("args", {})
    table = summary["settings"]
    lines = [
        f"# KV transfer across nodes: {meta.get('command', '')}", "",
        f"- date: {meta.get('date')}; git: {meta.get('git_revision')} (uncommitted changes "
        "possible: the revision is HEAD of the work tree)",
        f"- machine: {machine_line(meta['machine'])}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        f"- rounds: {args.get('rounds')}, {args.get('reps')} transfers per size and layout per "
        "round after one warm-up; every cell is the median of the rounds' values (each round's "
        "own median over its transfers), with min–max",
        f"- nodes: `{meta.get('cluster')}`; UCX_NET_DEVICES: "
        f"{args.get('ucx_net_devices') or 'not set (UCX found the veth by itself)'}",
        f"- buffers: {'4 KiB pages' if args.get('small_pages') else '2 MiB huge pages'}; "
        f"agents: vLLM's NIXL config (UCX backend, {meta.get('nixl_threads')} threads), "
        f"progress threads polling every {args.get('delay_us')} µs (pdserve's quiet connector)",
        "- nice values (from the probe processes): "
        + ", ".join(f"{n}: {s['nice']}" for n, s in table.items()),
        "- `other CPU s` below: what processes outside this benchmark used while each setting "
        "ran (near 0: a quiet machine; the 2 cores are shared with whatever runs); whole run "
        f"{meta.get('wall_s', '?')} s", "",
        "## Settings", "",
        "| setting | source node | reader node | UCX_TLS | UCX transports (reader's reads) | "
        "other CPU s |", "|---|---|---|---|---|---|",
        *[f"| {n} | {s['source_node']} | {s['reader_node']} | {s['ucx_tls'] or '(default)'} | "
          f"{', '.join(s['transports']) or '?'} | {_cell(s['other_cpu_s'], 1)} |"
          for n, s in table.items()], "",
        "## NIXL READ throughput, GB/s (NIXL's own transfer time)", "",
        "Layouts: `one`: one descriptor for the whole transfer (vLLM's merged layers, best "
        f"case); `per_block`: one descriptor per {BLOCK_BYTES} B (a KV block of one layer of the "
        "bench model, vLLM's unit before merging; the remainder of a size is not moved).", "",
        *rate_table(summary, "telemetry"), "",
        "## NIXL READ throughput, GB/s (wall time from post to completion, reader polling)", "",
        *rate_table(summary, "wall"), "",
        "## Cross-node as a share of same-node (telemetry medians)", "",
        *ratio_table(summary), "",
        "## Bytes over the veth links, MB per round (median)", "",
        "Moved: every byte NIXL read (warm-ups included). Source sent / reader received: the "
        "nodes' veth counters over the whole setting (start-up, wire-up and TCP/IP headers "
        "included). Same-node settings should leave the links near 0; so does cross-node with "
        "UCX's own choice if it reads the other node's memory directly (what the cluster's TCP "
        "pin prevents); cross-node over TCP should send at least the bytes moved.", "",
        "| setting | moved | source link sent | reader link received | sent / moved |",
        "|---|---|---|---|---|",
        *[f"| {n} | {_mb(s['moved_bytes'])} | {_mb(s['source_link_sent_bytes'])} | "
          f"{_mb(s['reader_link_received_bytes'])} | {_cell(s['sent_per_moved'], 3)} |"
          for n, s in table.items()], "",
    ]
    rounds = summary.get("per_round", [])
    keys = list(dict.fromkeys(k for row in rounds for k in row["gbps"]))
    if rounds:
        lines += ["## Per round: telemetry GB/s (the round's median), wall and other CPU", "",
                  "A setting's wall time includes both processes' start-up (~10 s of imports "
                  "each); `other CPU s`: CPU-seconds of processes outside this benchmark in "
                  "that time (2 cores: up to 2× the wall).", "",
                  "| round | setting | wall s | other CPU s | " + " | ".join(keys) + " |",
                  "|---|---|---|---|" + "---|" * len(keys)]
        lines += [f"| {row['round']} | {row['setting']} | {row['step_wall_s']} | "
                  f"{row['other_cpu_s']} | "
                  + " | ".join(f"{row['gbps'][k]:.2f}" if k in row["gbps"] else "–"
                               for k in keys) + " |" for row in rounds]
        lines.append("")
    notes = list(meta.get("notes", []))
    if any("software emulation" in t for s in table.values() for t in s["transports"]):
        notes.append("`software emulation`: UCX's TCP transport has no remote read of its own, "
                     "so UCX emulates a READ with messages: the reader asks, the source's UCX "
                     "worker answers with the data. The source's progress (its NIXL progress "
                     "thread here, polling every `delay_us`) is then on the path of every read, "
                     "which it is not with cross-memory attach (`cma`), where the reader's "
                     "kernel copies straight from the source's memory.")
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    if summary.get("errors"):
        lines += ["## Errors", "", *[f"- {e}" for e in summary["errors"]], ""]
    return "\n".join(lines)


# -- entry points ---------------------------------------------------------------------------
def write_report(out: Path, meta: dict[str, Any], raw: list[dict[str, Any]],
                 settings: Iterable[Setting]) -> None:
    summary = summarize(raw, settings)
    (out / "report.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=1))
    (out / "report.md").write_text(markdown(meta, summary))


def rerender(out: Path) -> None:
    """Rebuild the report from raw.json (after a change of the report's layout), keeping the
    run's metadata from report.json where there is one (it has the run's wall time)."""
    saved = json.loads((out / "raw.json").read_text())
    meta = saved["meta"]
    if (out / "report.json").exists():
        meta = json.loads((out / "report.json").read_text())["meta"]
    names = set(meta.get("args", {}).get("settings") or [s.name for s in SETTINGS])
    write_report(out, meta, saved["raw"], [s for s in SETTINGS if s.name in names])


