"""A Ray cluster of several nodes on this one machine, each node a host of its own network.

Each node runs in a Linux network namespace with its own address on a bridge in the root
namespace (one veth pair per node), and in a mount namespace of its own where its private
directory is mounted at the same path as every other node's (`node_dir`): its HOME, pdserve
cache and Ray temp dir sit at the same paths on every node, as on hosts built alike, with
different contents (a node builds `pdserve://` models itself, as a fresh host would). Same
paths matter: vLLM's NIXL handshake compares the model *path* of prefill and decode engines.
`ray start --head` runs in the first node, `ray start --address` in the others. What crosses
between nodes crosses the veth links, whose counters show it (`link_bytes`). The root
namespace reaches every node at its address (HTTP on the head node, say) but is not a node.

Two things stay shared, because the nodes share one kernel: the CPUs, and shared memory. UCX
(NIXL's transport) would move KV between two processes of one machine through shared memory
whatever their network namespaces, so the nodes pin UCX to TCP (`UCX_TLS`) to make KV cross the
link as it would between hosts.

Everything is cleaned up by what this module made: every process in the namespaces (not
`ray stop`, which stops every Ray on the machine), the namespaces, the bridge and the temp dirs.
Needs root (`ip netns`).

    python -m pdserve.netns_cluster up      # prints the head's address
    python -m pdserve.netns_cluster exec b -- ray status
    python -m pdserve.netns_cluster down
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pdserve.deployments.config.ray_serve_env import ray_start_env

#: Ray's GCS port on the head node.
GCS_PORT = 6379
#: UCX transports the nodes use: TCP only, so KV crosses the veth links (module docstring).
NODE_UCX_TLS = "tcp"
#: Cache locations of this machine's environment a node must not inherit: each node keeps its
#: caches under its own HOME, as a fresh host would.
HOST_CACHE_ENV = frozenset({"HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
                            "TRANSFORMERS_CACHE", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR",
                            "PDSERVE_HOME", "XDG_CACHE_HOME", "RAY_TMPDIR"})


@dataclass(frozen=True)
class Node:
    """One node: its namespace, address, Ray resources and directories."""

    name: str
    namespace: str
    ip: str
    host_link: str  # the veth end in the root namespace (its counters count the node's traffic)
    root: Path  # the node's own directory, as the root namespace sees it
    node_dir: Path  # where every node sees its own `root` (the same path on every node)
    num_cpus: int
    resources: Mapping[str, float] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        """HOME on the node (a path in the node's mount namespace)."""
        return self.node_dir / "home"

    @property
    def ray_temp_dir(self) -> Path:
        return self.node_dir / "ray"

    def seen_from_root(self, path: Path) -> Path:
        """A path of the node's, as the root namespace reaches it."""
        return self.root / path.relative_to(self.node_dir)

    @property
    def keeper_pid_file(self) -> Path:
        return self.root / "keeper.pid"


@dataclass
class NetnsCluster:
    """`nodes` nodes named a, b, … on `subnet`.0/24 (the bridge is .1, node i is .(i+2)); each
    node offers the custom resource `host_<name>` (100 units) for placing replicas on it.
    `prefix` names the namespaces, links and temp dirs, so a leftover of an earlier run with the
    same prefix is removed by the next `up`."""

    prefix: str = "pds"
    nodes_count: int = 2
    subnet: str = "10.77.0"
    num_cpus: int = 2
    base_dir: Path = Path("/tmp")
    env: Mapping[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.nodes_count <= 26:
            raise ValueError("nodes: 1 to 26")
        self.nodes = [
            Node(name=name, namespace=f"{self.prefix}-{name}", ip=f"{self.subnet}.{i + 2}",
                 host_link=f"{self.prefix}-{name}-h", root=self.base_dir / f"{self.prefix}-{name}",
                 node_dir=self.node_dir, num_cpus=self.num_cpus,
                 resources={f"host_{name}": 100.0})
            for i, name in enumerate("abcdefghijklmnopqrstuvwxyz"[:self.nodes_count])]

    @property
    def node_dir(self) -> Path:
        """Where each node sees its own directory: empty in the root namespace."""
        return self.base_dir / f"{self.prefix}-node"

    @property
    def auth_token_file(self) -> Path:
        """Ray's token for this cluster, made by `up` (root-only): every node and every process
        started on one gets it. The cluster's own, whatever the calling process's Ray uses (Ray
        2.60 turns token auth on in a process that started a local cluster, and a node would
        inherit that mode without a token to go with it)."""
        return self.head.root / "ray_auth_token"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def address(self) -> str:
        """The Ray address (GCS) of the cluster."""
        return f"{self.head.ip}:{GCS_PORT}"

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r}; nodes: {', '.join(n.name for n in self.nodes)}")

    # --- life cycle -------------------------------------------------------------------------

    def up(self, timeout_s: float = 180.0, start_ray: bool = True) -> None:
        """Network and namespaces first, then Ray on the head, then on the others (unless
        `start_ray` is false: hosts without Ray, for a process-level test); returns once every
        node is alive in the cluster. On any failure, everything made so far is removed."""
        self.down()
        try:
            self._network_up()
            for node in self.nodes:
                self._keeper_start(node)
            descriptor = os.open(self.auth_token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as token:
                token.write(secrets.token_hex(32))
            if not start_ray:
                return
            for node in self.nodes:
                self._ray_start(node)
            self.wait_for_nodes(len(self.nodes), timeout_s)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Kill every process in the nodes' namespaces, then remove the namespaces, links,
        bridge and directories. Safe to call whatever state things are in; raises (after
        removing everything it can) if a process of the cluster would not die."""
        for node in self.nodes:
            self.kill(node)
        survivors = [pid for node in self.nodes for pid in self.pids(node)]
        for node in self.nodes:
            _ip("netns", "delete", node.namespace, check=False)
            _ip("link", "delete", node.host_link, check=False)
            shutil.rmtree(node.root, ignore_errors=True)
        _ip("link", "delete", self.bridge, check=False)
        with contextlib.suppress(OSError):
            self.node_dir.rmdir()
        if survivors:
            raise RuntimeError(f"processes of the cluster outlived SIGKILL: {survivors}")

    def kill(self, node: Node, names: Sequence[str] = (), timeout_s: float = 30.0) -> list[int]:
        """SIGKILL the processes in `node`'s namespace (those whose command line contains one of
        `names`, when given) until none is left, for up to `timeout_s` (a process still
        exiting, or forked meanwhile, is caught by the next round); returns the pids killed."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pids = [pid for pid in self.pids(node) if not names or _cmdline_has(pid, names)]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                if pid not in killed:
                    killed.append(pid)
            time.sleep(0.1)
        return killed

    def pids(self, node: Node) -> list[int]:
        """Processes in the node's namespace (none when it does not exist)."""
        out = _ip("netns", "pids", node.namespace, check=False, capture=True)
        return [int(line) for line in out.split() if line.isdigit()]

    # --- using it ---------------------------------------------------------------------------

    def node_env(self, node: Node) -> dict[str, str]:
        """The environment of every process started on `node`: its own HOME and caches, UCX on
        TCP, Ray's start flags for pdserve (`ray_start_env`), and the cluster's `env`."""
        inherited = {name: value for name, value in os.environ.items()
                     if name not in HOST_CACHE_ENV and not name.startswith("RAY_AUTH_")}
        if self.auth_token_file.exists():
            inherited |= {"RAY_AUTH_MODE": "token",
                          "RAY_AUTH_TOKEN": self.auth_token_file.read_text().strip()}
        return {
            **inherited,
            **ray_start_env(),
            "HOME": str(node.home),
            "XDG_CACHE_HOME": str(node.home / ".cache"),
            "PDSERVE_HOME": str(node.home / ".cache" / "pdserve"),
            "RAY_ADDRESS": self.address,
            "RAY_worker_niceness": "0",
            "UCX_TLS": NODE_UCX_TLS,
            "VLLM_HOST_IP": node.ip,
            **self.env,
        }

    def command(self, node: Node, argv: Sequence[str]) -> list[str]:
        """`argv` run on `node`: in its network and mount namespaces (pass
        `env=self.node_env(node)` to run it). Refuses a node whose keeper is gone (its pid
        could belong to another process by now)."""
        keeper = int(node.keeper_pid_file.read_text())
        try:
            alive = (os.stat(f"/proc/{keeper}/ns/net").st_ino
                     == os.stat(f"/run/netns/{node.namespace}").st_ino)
        except OSError:
            alive = False
        if not alive:
            raise RuntimeError(f"node {node.name} is gone (its namespace keeper exited)")
        return ["nsenter", "--target", str(keeper), "--net", "--mount", f"--wd={os.getcwd()}",
                "--", *argv]

    def run(self, node: Node, argv: Sequence[str], timeout_s: float = 600,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `argv` on `node` to completion, capturing its output."""
        return subprocess.run(self.command(node, argv), env=self.node_env(node), text=True,
                              capture_output=True, timeout=timeout_s, check=check)

    def link_bytes(self, node: Node) -> tuple[int, int]:
        """Bytes (received, sent) by the node over its link so far."""
        stats = Path("/sys/class/net") / node.host_link / "statistics"
        # the host end's tx is what the node received, and the other way round
        return (int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text()))

    def wait_for_nodes(self, count: int, timeout_s: float) -> None:
        """Until `count` nodes are alive in the cluster, asked from the head node."""
        probe = ("import ray, json; ray.init(address='auto', log_to_driver=False); "
                 "print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'])))")
        deadline = time.monotonic() + timeout_s
        while True:
            done = self.run(self.head, [sys.executable, "-c", probe], timeout_s=120,
                            check=False)
            alive = int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0
            if alive >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{alive} of {count} Ray nodes alive after {timeout_s:.0f} s:"
                                   f" {done.stderr[-2000:]}")
            time.sleep(2.0)

    # --- internals --------------------------------------------------------------------------

    def _network_up(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for node in self.nodes:
            _ip("netns", "add", node.namespace)
            _ip("link", "add", node.host_link, "type", "veth", "peer", "name", "eth0",
                "netns", node.namespace)
            _ip("link", "set", node.host_link, "master", self.bridge)
            _ip("link", "set", node.host_link, "up")
            inside = ("-n", node.namespace)
            _ip(*inside, "addr", "add", f"{node.ip}/24", "dev", "eth0")
            _ip(*inside, "link", "set", "eth0", "up")
            _ip(*inside, "link", "set", "lo", "up")
            # a default route, so that "this host's address" lookups (Ray's, vLLM's) find eth0
            _ip(*inside, "route", "add", "default", "via", self.gateway)

    def _keeper_start(self, node: Node) -> None:
        """A process that holds the node's mount namespace, where the node's own directory is
        mounted at `node_dir`; every command on the node enters its namespaces."""
        (node.root / "home").mkdir(parents=True, exist_ok=True)
        self.node_dir.mkdir(parents=True, exist_ok=True)
        script = (f'mount --bind "{node.root}" "{node.node_dir}" && echo $$ > '
                  f'"{node.keeper_pid_file}" && exec sleep infinity')
        subprocess.Popen(["ip", "netns", "exec", node.namespace, "unshare", "--mount",
                          "--propagation", "private", "sh", "-c", script],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not node.keeper_pid_file.exists() or not node.keeper_pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {node.name}: its mount namespace did not start")
            time.sleep(0.05)

    def _ray_start(self, node: Node) -> None:
        argv = [str(Path(sys.executable).with_name("ray")), "start",
                "--node-ip-address", node.ip, "--num-cpus", str(node.num_cpus),
                "--resources", json.dumps(dict(node.resources)),
                "--temp-dir", str(node.ray_temp_dir), "--disable-usage-stats"]
        if node is self.head:
            argv += ["--head", "--port", str(GCS_PORT), "--include-dashboard=false"]
        else:
            argv += ["--address", self.address]
        done = self.run(node, argv, timeout_s=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`ray start` on node {node.name} failed:\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def _ip(*args: str, check: bool = True, capture: bool = False) -> str:
    done = subprocess.run(["ip", *args], text=True, capture_output=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout if capture else ""


def _cmdline_has(pid: int, names: Sequence[str]) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return any(name in cmdline for name in names)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pdserve.netns_cluster",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default="pds")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--subnet", default="10.77.0", help="first three octets of a free /24")
    parser.add_argument("--num-cpus", type=int, default=2, help="Ray's CPUs per node")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the cluster (replacing one of the same prefix)")
    commands.add_parser("down", help="stop every process on its nodes and remove it")
    run = commands.add_parser("exec", help="run a command on a node: exec b -- ray status")
    run.add_argument("node")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cluster = NetnsCluster(prefix=args.prefix, nodes_count=args.nodes, subnet=args.subnet,
                           num_cpus=args.num_cpus)
    if args.command == "up":
        cluster.up()
        for node in cluster.nodes:
            print(f"node {node.name}: {node.ip} (namespace {node.namespace}, "
                  f"resource host_{node.name})")
        print(f"RAY_ADDRESS={cluster.address}")
    elif args.command == "down":
        cluster.down()
    else:
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        node = cluster.node(args.node)
        return subprocess.call(cluster.command(node, command), env=cluster.node_env(node))
    return 0


if __name__ == "__main__":
    sys.exit(main())
