"""The KV-transfer benchmark's report: raw probe results → medians over rounds (min–max),
ratios against memcpy, raw NIXL and the busy-polling connector (`quiet-0`), idle CPU and priorities.

Pure functions over the JSON the probes printed, so the report can be re-rendered and tested.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

Spread = dict[str, float]  # {"median", "min", "max"}
#: The busy-polling reference: NIXL's poll without delay, with the same core binding.
BUSY = "pd:quiet-0"
#: Raw NIXL descriptor layouts in report order (`kv_transfer_probes.piece_bytes`).
LAYOUT_ORDER = ["one", "per_layer", "per_block"]


def spread(values: list[float]) -> Spread | None:
    """Median and range of per-round values (None without any)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _rounds(raw: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in raw if r["name"] == name and "error" not in r]


def _pd_rates(result: dict[str, Any], length: int) -> list[float]:
    rows = result["lengths"].get(str(length), {})
    return [b / t / 1e9 for b, t in zip(rows.get("bytes", []), rows.get("transfer_s", []),
                                         strict=False) if t > 0]


def rates(raw: list[dict[str, Any]], lengths: list[int], size_of: dict[int, int]
          ) -> dict[str, dict[str, Spread | None]]:
    """GB/s per source (memcpy, raw NIXL per layout, PD per variant) and length."""
    out: dict[str, dict[str, Spread | None]] = defaultdict(dict)
    for length in lengths:
        size = str(size_of[length])
        for key, field in (("memcpy", "gbps"), ("memcpy:4k", "gbps_4k")):
            values = [statistics.median(r[field][size]) for r in _rounds(raw, "memcpy")
                      if field in r]
            if values:
                out[key][str(length)] = spread(values)
        for probe, suffix in (("raw_nixl", ""), ("raw_nixl:4k", ":4k")):
            rounds = _rounds(raw, probe)
            for layout in sorted({layout for r in rounds for layout in r["gbps"]},
                                 key=LAYOUT_ORDER.index):
                out[f"nixl:{layout}{suffix}"][str(length)] = spread([
                    statistics.median(r["gbps"][layout][size]["telemetry"]) for r in rounds
                    if layout in r["gbps"]])
        for name in sorted({r["name"] for r in raw if r["name"].startswith("pd:")}):
            values = [statistics.median(v) for r in _rounds(raw, name)
                      if (v := _pd_rates(r, length))]
            out[name][str(length)] = spread(values)
    return dict(out)


def latencies(raw: list[dict[str, Any]], length: int) -> dict[str, dict[str, Spread | None]]:
    """Per PD variant: p50/p99 of the decode side's first token after a pull, and of NIXL's
    transfer time, in ms, at one prompt length (per round, then median over rounds)."""
    out: dict[str, dict[str, Spread | None]] = {}
    for name in sorted({r["name"] for r in raw if r["name"].startswith("pd:")}):
        rows = [r["lengths"].get(str(length), {}) for r in _rounds(raw, name)]
        out[name] = {
            f"{metric}_p{q}": spread([percentile(row[key], q) * 1e3 for row in rows
                                      if row.get(key)])
            for metric, key in (("first_token_ms", "pull_first_token_s"),
                                ("transfer_ms", "transfer_s"))
            for q in (50, 99)
        }
    return out


def idle(raw: list[dict[str, Any]]) -> dict[str, Spread | None]:
    """Cores each engine used while idle, per probe and engine kind."""
    values: dict[str, list[float]] = defaultdict(list)
    for r in raw:
        for engine, cores in (r.get("idle_cores") or {}).items():
            variant = r["name"].split(":", 1)[1]
            label = engine if variant == engine else f"{engine} ({variant})"
            values[label].append(cores)
    return {label: spread(v) for label, v in sorted(values.items())}


def nice_values(raw: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Distinct nice values per probe's engines, plus the probe processes themselves."""
    seen: dict[str, set[int]] = defaultdict(set)
    for r in raw:
        for engine, by_pid in (r.get("nice") or {}).items():
            seen[engine].update(by_pid.values())
        if "probe_nice" in r:
            seen["probe processes (load, memcpy, NIXL)"].add(r["probe_nice"])
    return {k: sorted(v) for k, v in sorted(seen.items())}


def summarize(raw: list[dict[str, Any]], lengths: list[int], latency_length: int,
              bytes_per_token: int) -> dict[str, Any]:
    size_of = {length: length * bytes_per_token for length in lengths}
    return {
        "lengths": lengths, "latency_length": latency_length, "bytes": size_of,
        "rates_gbps": rates(raw, lengths, size_of),
        "latency_ms": latencies(raw, latency_length),
        "idle_cores": idle(raw),
        "nice": nice_values(raw),
        "errors": [f"round {r['round']} {r['name']}: {r['error']}" for r in raw if "error" in r],
        "threads": {f"round {r['round']} {r['name']}": r["threads"] for r in raw
                    if r.get("threads")},
    }


def _cell(value: Spread | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return (f"{value['median']:.{digits}f} ({value['min']:.{digits}f}–"
            f"{value['max']:.{digits}f})")


def _ratio(a: Spread | None, b: Spread | None) -> str:
    if a is None or b is None or not b["median"]:
        return "–"
    return f"{a['median'] / b['median']:.0%}"


def _rate_tables(summary: dict[str, Any]) -> list[str]:
    rates_ = summary["rates_gbps"]
    sources = list(rates_)
    pd = [s for s in sources if s.startswith("pd:")]
    lines = ["| tokens | MB | " + " | ".join(sources) + " |",
             "|---|---|" + "---|" * len(sources)]
    for length in summary["lengths"]:
        mb = summary["bytes"][length] / 2**20
        lines.append(f"| {length} | {mb:.0f} | " + " | ".join(
            _cell(rates_[s].get(str(length))) for s in sources) + " |")
    lines += ["", "PD path as a share of memcpy and of raw NIXL with the same number of "
              "descriptors (`per_layer`; vLLM merged each layer's blocks into one) and with one:",
              "", "| tokens | variant | / memcpy | / nixl:per_layer | / nixl:one |",
              "|---|---|---|---|---|"]
    for length in summary["lengths"]:
        for name in pd:
            mine = rates_[name].get(str(length))
            lines.append(f"| {length} | {name} | " + " | ".join(
                _ratio(mine, rates_.get(ref, {}).get(str(length)))
                for ref in ("memcpy", "nixl:per_layer", "nixl:one")) + " |")
    return lines


def _latency_table(summary: dict[str, Any]) -> list[str]:
    table = summary["latency_ms"]
    busy = table.get(BUSY, {})
    keys = ["first_token_ms_p50", "first_token_ms_p99", "transfer_ms_p50", "transfer_ms_p99"]
    lines = ["| variant | " + " | ".join(keys) + " | p50 / quiet-0 | p99 / quiet-0 |",
             "|---|" + "---|" * (len(keys) + 2)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(_cell(row.get(k), 1) for k in keys)
                     + f" | {_ratio(row.get(keys[0]), busy.get(keys[0]))}"
                     + f" | {_ratio(row.get(keys[1]), busy.get(keys[1]))} |")
    return lines


def markdown(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    args = meta.get("args", {})
    lines = [
        f"# KV-transfer benchmark: {meta.get('command', '')}", "",
        f"- date: {meta.get('date')}; git: {meta.get('git_revision')}",
        f"- machine: {meta.get('machine')}", f"- versions: {meta.get('versions')}",
        f"- model geometry: {meta.get('geometry')}",
        f"- rounds: {args.get('rounds')}; every cell is the median of the rounds' values "
        "(each round's own median over its repetitions), with min–max",
        "", "## Transfer rate, GB/s", "",
        "memcpy: one thread copying the same bytes; nixl: NIXL READ (UCX) from another "
        "process, NIXL's own transfer time; pd: the KV of a fresh prompt pulled by a decode "
        "engine from a prefill engine (vLLM's NIXL connector telemetry, same clock as nixl). "
        "Buffers are on 2 MiB huge pages, as pdserve's connector puts the KV cache (`vllm`: "
        "vLLM's own connector, torch's 4 KiB pages); `:4k`: the same probe on 4 KiB pages.",
        "", *_rate_tables(summary), "",
        f"## Pull latency at {summary['latency_length']} tokens, ms", "",
        "first_token: decode request submitted with the prefill's transfer params → its first "
        "token (KV pull + one step); transfer: NIXL's transfer time alone.", "",
        *_latency_table(summary), "",
        "## Idle CPU per engine, cores (target ≤ 0.05)", "",
        f"Engine processes (engine core + worker) over {args.get('idle')} s, "
        f"{args.get('settle')} s after their last request.", "",
        "| engine | cores |", "|---|---|",
        *[f"| {k} | {_cell(v, 3)} |" for k, v in summary["idle_cores"].items()], "",
        "## Priority (nice, read from /proc/<pid>/stat)", "",
        *[f"- {k}: {v}" for k, v in summary["nice"].items()], "",
    ]
    if summary.get("threads"):
        last = list(summary["threads"].items())[-len(args.get("variants") or [1]):]
        lines += ["## Threads that used CPU, with their allowed cores (last round)", ""]
        lines += [f"- {name}: {threads}" for name, threads in last]
        lines.append("")
    if summary.get("errors"):
        lines += ["## Errors", "", *[f"- {e}" for e in summary["errors"]], ""]
    return "\n".join(lines)
