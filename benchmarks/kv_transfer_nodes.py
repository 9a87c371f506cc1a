"""KV transfer across the veth link between two network-namespace nodes, next to the same node.

The multi-node cluster (`pdserve.netns_cluster`) pins UCX to TCP so that KV crosses the nodes'
veth links as it would cross a network between hosts; this benchmark says what that costs. It
measures raw NIXL READ throughput (GB/s) of a few sizes, agents configured as vLLM's
(`kv_transfer_probes.raw_nixl`'s config, quiet progress threads, buffers on 2 MiB pages), in
four settings, one after another in every round:

- `same-node:default`: source and reader on node a, UCX's default transports (shared memory /
  cross-memory attach between two processes of one host: what one host's PD pair uses);
- `same-node:tcp`: the same two processes with `UCX_TLS=tcp` (TCP through the node's own stack);
- `cross-node:tcp`: source on node b, reader on node a, `UCX_TLS=tcp`: the bytes cross the veth
  link, whose counters (`NetnsCluster.link_bytes`) are read before and after and reported next
  to the bytes moved, proving they went over it;
- `cross-node:default`: the same two nodes with UCX's own choice: why the cluster pins TCP (two
  processes of one machine share its memory whatever their network namespaces, and UCX uses it).

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
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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
    Setting("cross-node:default", "b", "a", None),
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
    from pdserve.benchmarks.kv_transfer_nodes_report import rerender, write_report
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


if __name__ == "__main__":
    sys.exit(main())
