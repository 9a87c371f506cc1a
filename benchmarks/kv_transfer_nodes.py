"""KV transfer across the veth link between two network-namespace nodes, next to the same node.

The multi-node cluster (`pdserve.netns_cluster`) pins UCX to TCP so that KV crosses the nodes'
veth links as it would cross a network between hosts; this benchmark says what that costs. It
measures raw NIXL READ throughput (GB/s) of a few sizes, agents configured as vLLM's
(`kv_transfer_probes.raw_nixl`'s config, quiet progress threads, buffers on 2 MiB pages), in
three settings, one after another in every round:

- `same-node:default`: source and reader on node a, UCX's default transports (shared memory /
  cross-memory attach between two processes of one host: what one host's PD pair uses);
- `same-node:tcp`: the same two processes with `UCX_TLS=tcp` (TCP through the node's own stack);
- `cross-node:tcp`: source on node b, reader on node a, `UCX_TLS=tcp`: the bytes cross the veth
  link, whose counters (`NetnsCluster.link_bytes`) are read before and after and reported next
  to the bytes moved, proving they went over it.

Every setting starts a fresh source and reader process (`python -m ... source|reader`, in the
node's namespaces through `nsenter`). A multiprocessing Pipe cannot span `nsenter`, so the
source publishes its NIXL agent metadata and buffer address in a file of a temp dir (the file
system is shared by the nodes outside their private `node_dir`) and the reader says it is done
with another file. Rounds repeat the whole set so drift hits every setting alike; the report
gives medians of the rounds (each round's own median over its repetitions) with min–max.

    python -m pdserve.benchmarks.kv_transfer_nodes --rounds 3 \\
        --out benchmarks/results/kv-transfer-nodes-cpu-v1

Needs root (network namespaces). Uses its own prefix and subnet (`pdk`, 10.79.0.0/24).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Sizes moved per transfer, MiB (1: a short prompt's KV; 64: a long one's).
DEFAULT_SIZES_MIB = (1, 8, 64)
#: One KV block of one layer (K or V) of the bench model (block_size 32, float32; the
#: kv-transfer-cpu-v3 geometry): vLLM's descriptor unit before it merges a layer's blocks.
BLOCK_BYTES = 40960
#: Descriptor layouts (`kv_transfer_probes.piece_bytes`): one descriptor for the whole transfer
#: (vLLM's merged best case), and one per KV block (its unmerged, many-descriptor case).
LAYOUTS: dict[str, dict[str, int]] = {"one": {"pieces": 1}, "per_block": {"bytes": BLOCK_BYTES}}
#: Files of the exchange between source and reader (in a temp dir both namespaces see).
SOURCE_FILE, DONE_FILE = "source.json", "done"
#: How long a side waits for the other before giving up, s.
WAIT_S = 300.0
#: Prefix and subnet of this benchmark's nodes (other work uses pds/pdt, 10.77.0/10.78.0).
PREFIX, SUBNET = "pdk", "10.79.0"
RESULT = "RESULT "


@dataclass(frozen=True)
class Setting:
    """Where the source (the prefill side, read from) and the reader (decode side) run, and
    the UCX transports they may use (None: UCX's own choice)."""

    name: str
    source_node: str
    reader_node: str
    ucx_tls: str | None


SETTINGS: tuple[Setting, ...] = (
    Setting("same-node:default", "a", "a", None),
    Setting("same-node:tcp", "a", "a", "tcp"),
    Setting("cross-node:tcp", "b", "a", "tcp"),
)


# -- the two processes (run inside a node) ---------------------------------------------------
def _wait_for(path: Path, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout_s:.0f} s")
        time.sleep(0.02)


def _agent(name: str, delay_us: int, telemetry: bool = False) -> Any:
    """A NIXL agent configured as vLLM's connector configures its own, with pdserve's quiet
    progress thread (`kv_transfer_probes.quiet_agents`)."""
    from vllm.distributed.nixl_utils import NixlWrapper, nixl_agent_config

    from pdserve.benchmarks.kv_transfer_probes import VLLM_NIXL_THREADS, quiet_agents

    quiet_agents(delay_us)
    return NixlWrapper(name, nixl_agent_config(num_threads=VLLM_NIXL_THREADS,
                                               capture_telemetry=telemetry))


def source(exchange: str, size: int, delay_us: int, huge_pages: bool) -> dict[str, Any]:
    """The remote side: registers `size` bytes, publishes its agent metadata and the buffer's
    address in `exchange`, then waits until the reader is done."""
    from pdserve.benchmarks.kv_transfer_probes import PREFILL_CORE, page_backed

    os.sched_setaffinity(0, {PREFILL_CORE})
    agent = _agent("src", delay_us)
    buffer = page_backed(size, 1, huge_pages)
    agent.register_memory([(buffer.data_ptr(), size, 0, "")], "DRAM")
    folder = Path(exchange)
    staged = folder / (SOURCE_FILE + ".tmp")
    staged.write_text(json.dumps({
        "metadata": base64.b64encode(agent.get_agent_metadata()).decode(),
        "address": buffer.data_ptr(), "size": size, "pid": os.getpid()}))
    staged.rename(folder / SOURCE_FILE)  # the reader never sees half a file
    _wait_for(folder / DONE_FILE)
    return {"pid": os.getpid()}


def reader(exchange: str, sizes: list[int], layouts: dict[str, dict[str, int]], reps: int,
           delay_us: int, huge_pages: bool) -> dict[str, Any]:
    """NIXL READs of each size from the source, per descriptor layout: `wall` GB/s from post
    to completion with this process polling, `telemetry` GB/s over NIXL's own transfer time;
    `moved_bytes` counts every byte read, warm-up transfers included (for the link counters)."""

    from pdserve.benchmarks.kv_transfer_probes import DECODE_CORE, page_backed, timed_reads

    os.sched_setaffinity(0, {DECODE_CORE})
    folder = Path(exchange)
    _wait_for(folder / SOURCE_FILE)
    published = json.loads((folder / SOURCE_FILE).read_text())
    size_max = max(sizes)
    if published["size"] < size_max:
        raise ValueError(f"the source registered {published['size']} bytes, < {size_max}")
    agent = _agent("dst", delay_us, telemetry=True)
    buffer = page_backed(size_max, 0, huge_pages)
    agent.register_memory([(buffer.data_ptr(), size_max, 0, "")], "DRAM")
    remote = agent.add_remote_agent(base64.b64decode(published["metadata"]))
    try:
        out, descriptors, moved_total = timed_reads(
            agent, buffer.data_ptr(), published["address"], remote, sizes, layouts, reps)
    finally:
        (folder / DONE_FILE).write_text("done")
    return {"gbps": out, "descriptors": descriptors, "moved_bytes": moved_total,
            "pid": os.getpid()}


ROLES = {"source": source, "reader": reader}


# -- the orchestrator (root namespace) ------------------------------------------------------
#: `tl/device` names in UCX's protocol-selection tables (`UCX_PROTO_INFO=y`), e.g. `tcp/eth0`,
#: `cma/memory`, `posix/memory`.
_TRANSPORT = re.compile(r"\b(?:tcp|cma|posix|sysv|xpmem|knem|self|rc_\w+|ud_\w+|dc_\w+)"
                        r"/[A-Za-z0-9_.:-]+")
#: The title of UCX's table for NIXL's READ (`ucp_get*`).
_READ_TITLE = "remote memory read"


def transports(log_text: str) -> list[str]:
    """What UCX picked for remote memory reads (NIXL's READ), from the protocol tables a
    process prints with `UCX_PROTO_INFO=y`: `tl/device (how)` per row of those tables, e.g.
    `cma/memory (zero-copy)`, `tcp/eth0 (software emulation)`."""
    found: set[str] = set()
    in_read_table = False
    for line in log_text.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 1 and " by " in cells[0]:  # a table's title: which operation
            in_read_table = cells[0].startswith(_READ_TITLE)
        elif in_read_table and len(cells) >= 3:
            found.update(f"{tl} ({cells[-2]})" for tl in _TRANSPORT.findall(cells[-1]))
    return sorted(found)


def link_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
               ) -> dict[str, dict[str, int]]:
    """Bytes each node received and sent over its veth link between two readings."""
    return {node: {"received": after[node][0] - before[node][0],
                   "sent": after[node][1] - before[node][1]} for node in before}


def _result(log: Path) -> dict[str, Any] | None:
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if line.startswith(RESULT)]
    return json.loads(lines[-1].removeprefix(RESULT)) if lines else None


def run_setting(cluster: Any, setting: Setting, args: argparse.Namespace, logs: Path,
                tag: str) -> dict[str, Any]:
    """One source and one reader process of `setting`, and what the links counted meanwhile."""
    from pdserve.benchmarks.cpuwatch import StepWatch

    sizes = [mib * 2**20 for mib in args.sizes]
    common = {"delay_us": args.delay_us, "huge_pages": not args.small_pages}
    exchange = tempfile.mkdtemp(prefix=f"{PREFIX}-kvx-", dir="/tmp")
    argv = {"source": {"exchange": exchange, "size": max(sizes), **common},
            "reader": {"exchange": exchange, "sizes": sizes, "layouts": LAYOUTS,
                       "reps": args.reps, **common}}
    nodes = {"source": setting.source_node, "reader": setting.reader_node}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    log_paths = {role: logs / f"{tag}-{role}.log" for role in ROLES}
    watch = StepWatch()
    before = {node.name: cluster.link_bytes(node) for node in cluster.nodes}
    watch.begin()
    try:
        for role in ("source", "reader"):  # both start at once: start-up is most of the time
            node = cluster.node(nodes[role])
            env = cluster.node_env(node)
            env.pop("UCX_TLS", None)
            if setting.ucx_tls:
                env["UCX_TLS"] = setting.ucx_tls
            if args.ucx_net_devices:
                env["UCX_NET_DEVICES"] = args.ucx_net_devices
            env["UCX_PROTO_INFO"] = "y"  # UCX prints the transports it picked for each op
            command = [sys.executable, "-m", "pdserve.benchmarks.kv_transfer_nodes", role,
                       json.dumps(argv[role])]
            with log_paths[role].open("w") as log:
                procs[role] = subprocess.Popen(cluster.command(node, command), env=env,
                                               stdout=log, stderr=subprocess.STDOUT)
        for role in ("reader", "source"):
            procs[role].wait(timeout=args.timeout)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for name in (SOURCE_FILE, SOURCE_FILE + ".tmp", DONE_FILE):
            Path(exchange, name).unlink(missing_ok=True)
        os.rmdir(exchange)
    cpu = watch.end()
    after = {node.name: cluster.link_bytes(node) for node in cluster.nodes}
    results = {role: _result(path) for role, path in log_paths.items()}
    failed = [f"{role} exit {procs[role].returncode}" for role in ROLES
              if procs[role].returncode != 0 or results[role] is None]
    if failed:
        raise RuntimeError(f"{', '.join(failed)}; see {logs}/{tag}-*.log")
    read = results["reader"] or {}
    return {**read, "link": link_delta(before, after), **cpu,
            "transports": {role: transports(path.read_text(errors="replace"))
                           for role, path in log_paths.items()},
            "nice": {role: (results[role] or {}).get("probe_nice") for role in ROLES}}


# -- the report (pure) ----------------------------------------------------------------------
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
        "included). Same-node settings should leave the links near 0; cross-node should send "
        "at least the bytes moved.", "",
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
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pdserve.deployments.config import KVTransferSettings

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3, help="transfers per size and layout")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES_MIB)),
                   type=lambda v: [int(x) for x in v.split(",") if x], help="MiB, comma-separated")
    p.add_argument("--delay-us", type=int,
                   default=KVTransferSettings().progress_thread_delay_us,
                   help="NIXL progress thread delay (pdserve's default)")
    p.add_argument("--small-pages", action="store_true", help="buffers on 4 KiB pages")
    p.add_argument("--ucx-net-devices", default="",
                   help="UCX_NET_DEVICES for both processes (default: unset)")
    p.add_argument("--timeout", type=float, default=300.0, help="s per setting")
    p.add_argument("--rerender", action="store_true",
                   help="only rebuild report.json/md in --out from its raw.json")
    p.add_argument("--settings", default=",".join(s.name for s in SETTINGS),
                   type=lambda v: [x for x in v.split(",") if x],
                   help="which settings to run, comma-separated")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pdserve.benchmarks import report, systems
    from pdserve.benchmarks.kv_transfer_probes import VLLM_NIXL_THREADS
    from pdserve.netns_cluster import NetnsCluster

    raw_argv = argv if argv is not None else sys.argv[1:]
    if raw_argv[:1] and raw_argv[0] in ROLES:  # one side of a transfer, inside a node
        result = ROLES[raw_argv[0]](**json.loads(raw_argv[1]))
        result["probe_nice"] = os.nice(0)
        print(RESULT + json.dumps(result), flush=True)
        return 0
    args = parse_args(raw_argv)
    if args.rerender:
        rerender(args.out)
        return 0
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    meta = report.run_metadata("python -m pdserve.benchmarks.kv_transfer_nodes "
                               + shlex.join(raw_argv), systems.REPO_ROOT)
    meta["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta["nixl_threads"] = VLLM_NIXL_THREADS
    meta["harness_nice"] = os.nice(0)
    cluster = NetnsCluster(prefix=PREFIX, subnet=SUBNET, nodes_count=2)
    meta["cluster"] = {n.name: {"ip": n.ip, "namespace": n.namespace, "link": n.host_link}
                       for n in cluster.nodes}
    chosen = [s for s in SETTINGS if s.name in args.settings]
    if len(chosen) != len(args.settings):
        raise SystemExit(f"settings: some of {args.settings} not in {[s.name for s in SETTINGS]}")
    raw: list[dict[str, Any]] = []
    raw_path = args.out / "raw.json"
    started = time.monotonic()
    try:
        cluster.up(start_ray=False)
        for round_index in range(args.rounds):
            for setting in chosen:
                tag = f"r{round_index}-{setting.name.replace(':', '-')}"
                print(f"round {round_index + 1}/{args.rounds}: {setting.name}", flush=True)
                try:
                    result = run_setting(cluster, setting, args, logs, tag)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    result = {"error": str(exc)}
                raw.append({"round": round_index, "setting": setting.name, **result})
                raw_path.write_text(json.dumps({"meta": meta, "raw": raw}, indent=1))
    finally:
        cluster.down()
    meta["wall_s"] = round(time.monotonic() - started, 1)
    write_report(args.out, meta, raw, chosen)
    print((args.out / "report.md").read_text())
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
