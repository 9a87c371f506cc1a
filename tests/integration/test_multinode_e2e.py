"""Two Ray nodes, each a host of its own network (`pdserve.netns_cluster`), serving
`serve_configs/two_nodes.yaml`: prefill on node a, decode on node b, a colocated model with an
engine on each. The KV of every disaggregated prompt crosses the veth link between them; the
ingress (node a) follows KV events from both nodes; losing node b's raylet fails its requests
over to node a, or refuses them clearly where nothing is left to serve them.

The cluster runs after every other test (its own marker): the nodes share this machine's two
cores, and a `ray stop` elsewhere would stop its Ray too.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from cases import Case
from client import post, sse_chunks
from conftest import MAX_TOKENS, NETNS_PREFIX, NETNS_SUBNET, stop_session_app
from prometheus_client.parser import text_string_to_metric_families
from shapes import BLOCK_SIZE, ENGINE_KWARGS

from pdserve.deployments.api.keys import Caller, key_hash, new_key, tenant_cache_salt
from pdserve.deployments.config import KVTransferSettings
from pdserve.kv_transfer.ports import EngineSlot, side_channel_port
from pdserve.netns_cluster import NetnsCluster, Node
from pdserve.tiny_model import recall_prompt_text

pytestmark = pytest.mark.separate_hosts

CONFIG = Path(__file__).parents[2] / "serve_configs" / "two_nodes.yaml"
PD, SPREAD = "tiny", "tiny-spread"
#: how long a PD request waits for a decode replica once node b is gone (the test's bound)
COLD_START_S = 15
#: a stream of a few seconds, so that node b's raylet dies while it runs: the tiny model
#: copies a 320-word span confidently for ~700 tokens, ~5 ms each here
RESUME_TOKENS, RESUME_WORDS = 600, 320
KEY_NAME = "test"
#: the prefix-cache namespace of the test's key: every request of it hashes its blocks with it
CACHE_SALT = tenant_cache_salt(Caller(KEY_NAME, frozenset(), None, f"key:{KEY_NAME}"), None)


class Probe:
    """A Ray driver on the head node (`netns_probe.py`), for what only a Serve handle sees."""

    def __init__(self, cluster: NetnsCluster, log: Path) -> None:
        script = Path(__file__).with_name("netns_probe.py")
        self.log = log
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                cluster.command(cluster.head, [sys.executable, str(script)]),
                env=cluster.node_env(cluster.head), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert json.loads(self._line()) == {"ready": True}

    def _line(self) -> str:
        """The probe's next reply (lines Ray itself prints are skipped)."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, f"the probe driver exited: {self.log.read_text()[-3000:]}"
            if line.startswith("PROBE "):
                return line[len("PROBE "):]

    def __call__(self, call: str, **args: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"call": call, **args}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self._line())
        assert "error" not in reply, reply["error"]
        return reply["result"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class TwoNodes:
    cluster: NetnsCluster
    http: httpx.Client
    probe: Probe
    a: Node = field(init=False)
    b: Node = field(init=False)

    def __post_init__(self) -> None:
        self.a, self.b = self.cluster.nodes

    def replicas_by_node(self, pool: str) -> dict[str, str]:
        """Node IP → replica id of a pool, from where each replica publishes its KV events."""
        streams = self.probe("routing")[pool]["streams"]
        found: dict[str, str] = {}
        for replica, stream in streams.items():
            ip = re.match(r"tcp://([\d.]+):\d+$", stream["endpoint"])
            assert ip, stream["endpoint"]
            found[ip.group(1)] = replica
        return found

    def metrics(self, deployment: str, replica: str) -> dict[str, float]:
        """vLLM's metrics of one engine, summed over label sets, by sample name (and, for
        prompt tokens, by source)."""
        text = self.probe("vllm_metrics", deployment=deployment, replica=replica)
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name
                if "source" in sample.labels:
                    name += ":" + sample.labels["source"]
                values[name] = values.get(name, 0.0) + sample.value
        return values


def processes(pids: list[int]) -> list[psutil.Process]:
    """The processes of `pids` that still exist."""
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return found


def still_running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def deploy_config(tmp: Path) -> Path:
    """`two_nodes.yaml` as shipped, with the session's engine arguments (so the bare engine's
    reference applies) and a short wait for a decode replica once its node is gone."""
    doc = yaml.safe_load(CONFIG.read_text())
    app = doc["applications"][0]["args"]
    for model in app["models"]:
        model["engine_kwargs"] = ENGINE_KWARGS
    app["models"][0]["decode"]["cold_start_timeout_s"] = COLD_START_S
    app["node_placement"] = "strict"  # a static cluster: a pool it cannot hold fails the build
    path = tmp / "two_nodes.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def wait_ready(nodes: TwoNodes, timeout_s: float = 600) -> None:
    """Until both models answer and the ingress follows all four engines' KV events."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ready = nodes.http.get("/health").status_code == 200
            if ready:
                for model in (PD, SPREAD):
                    body = {"model": model, "prompt": " ".join(["warm up"] * 40),
                            "max_tokens": 1}
                    ready &= nodes.http.post("/v1/completions", json=body).status_code == 200
            if ready:
                routing = nodes.probe("routing")
                counts = [len(routing[pool]["streams"]) for pool in
                          (f"{PD}/prefill", f"{PD}/decode", f"{SPREAD}/colocated")]
                ready = counts == [1, 1, 2]
        except (httpx.HTTPError, KeyError):
            ready = False
        if ready:
            return
        assert time.monotonic() < deadline, "the two-node app did not become ready"
        time.sleep(5)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    stop_session_app()
    key = new_key()
    keys = {"keys": [{"name": KEY_NAME, "sha256": key_hash(key), "scopes": ["admin"]}]}
    cluster = NetnsCluster(prefix=NETNS_PREFIX, subnet=NETNS_SUBNET,
                           env={"PDSERVE_API_KEYS": json.dumps(keys)})
    tmp = tmp_path_factory.mktemp("two_nodes")
    config = deploy_config(tmp)
    cluster.up()
    probe = None
    try:
        deployed = cluster.run(cluster.head, [str(Path(sys.executable).with_name("serve")),
                                              "run", "--non-blocking", str(config)], check=False)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        probe = Probe(cluster, tmp / "probe.log")
        with httpx.Client(base_url=f"http://{cluster.head.ip}:8000", timeout=300,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            two = TwoNodes(cluster, http, probe)
            wait_ready(two)
            yield two
    finally:
        if probe is not None:
            probe.close()
        started = processes([pid for node in cluster.nodes for pid in cluster.pids(node)])
        cluster.down()
        # whatever happened, nothing of the cluster is left on the machine
        alive = [p for p in started if still_running(p)]
        assert not alive, alive
        links = [cluster.bridge, *(node.host_link for node in cluster.nodes)]
        assert not [link for link in links if Path("/sys/class/net", link).exists()]
        assert not [node.root for node in cluster.nodes if node.root.exists()]
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                    text=True).stdout
        assert not any(node.namespace in namespaces for node in cluster.nodes)


def test_pd_across_nodes_equals_the_bare_engine_and_its_kv_crosses_the_link(
    nodes: TwoNodes, cases: list[Case], bare_reference: list[list[int]]
) -> None:
    prefill = nodes.replicas_by_node(f"{PD}/prefill")
    decode = nodes.replicas_by_node(f"{PD}/decode")
    assert list(prefill) == [nodes.a.ip] and list(decode) == [nodes.b.ip], (prefill, decode)
    # node b built the model itself: its own cache, at the same path as node a's
    built = nodes.b.seen_from_root(nodes.b.home / ".cache" / "pdserve" / "models")
    assert any(built.iterdir()), f"no model built on node b ({built})"

    decoder = decode[nodes.b.ip]
    before = nodes.metrics(f"{PD}-decode", decoder)
    received_before = nodes.cluster.link_bytes(nodes.b)[0]
    mismatches = []
    for case, bare_ids in zip(cases, bare_reference, strict=True):
        reply = post(nodes.http, case.path(), case.body(PD, MAX_TOKENS))
        assert reply.status == 200, (case.label, reply.body)
        if reply.token_ids != bare_ids:
            mismatches.append((case.label, reply.token_ids, bare_ids))
    assert not mismatches, "\n".join(map(str, mismatches))

    after = nodes.metrics(f"{PD}-decode", decoder)
    received = nodes.cluster.link_bytes(nodes.b)[0] - received_before
    pulled = (after["vllm:prompt_tokens_by_source_total:external_kv_transfer"]
              - before["vllm:prompt_tokens_by_source_total:external_kv_transfer"])
    moved = (after["vllm:nixl_bytes_transferred_sum"]
             - before["vllm:nixl_bytes_transferred_sum"])
    failed = (after.get("vllm:nixl_num_failed_transfers_total", 0.0)
              - before.get("vllm:nixl_num_failed_transfers_total", 0.0))
    assert pulled >= 10 * BLOCK_SIZE, pulled
    assert moved > 0 and failed == 0, (moved, failed)
    # UCX is pinned to TCP on the nodes: the KV NIXL moved came over node b's link
    assert received >= moved, (received, moved)
    fallbacks = {k: v for k, v in nodes.probe("stats")[PD].items() if k.startswith("fallback")}
    assert not fallbacks, fallbacks


def listening(nodes: TwoNodes, node: Node) -> set[str]:
    """`address:port` of every TCP socket listening on `node` (`ss`, run there)."""
    out = nodes.cluster.run(node, ["ss", "-Hltn"]).stdout
    return {line.split()[3] for line in out.splitlines() if line.strip()}


def test_engines_listen_on_their_nodes_cluster_address_only(nodes: TwoNodes) -> None:
    """The NIXL side channel and the KV-event sockets (prompt token ids) of every engine are
    bound to its node's cluster address, not to every interface nor to loopback."""
    wanted: dict[str, list[int]] = {nodes.a.ip: [], nodes.b.ip: []}
    routing = nodes.probe("routing")
    for pool in (f"{PD}/prefill", f"{PD}/decode", f"{SPREAD}/colocated"):
        for stream in routing[pool]["streams"].values():
            ip, port = re.match(r"tcp://([\d.]+):(\d+)$", stream["endpoint"]).groups()
            wanted[ip].append(int(port))
    # side channels: the prefill engine is pool 0 on a, the decode engine pool 1 on b
    base = KVTransferSettings().side_channel_base_port
    wanted[nodes.a.ip].append(side_channel_port(base, EngineSlot(pool_index=0, local_rank=0)))
    wanted[nodes.b.ip].append(side_channel_port(base, EngineSlot(pool_index=1, local_rank=0)))
    for node in nodes.cluster.nodes:
        sockets = listening(nodes, node)
        for port in wanted[node.ip]:
            assert f"{node.ip}:{port}" in sockets, (node.name, port, sorted(sockets))
            others = {s for s in sockets if s.rsplit(":", 1)[1] == str(port)}
            assert others == {f"{node.ip}:{port}"}, others


def held_on(nodes: TwoNodes, node: Node, words: int = 100,
            attempts: int = 12) -> tuple[str, list[int]]:
    """A prompt (of `words` words to copy) whose KV the colocated engine on `node` holds, per
    the ingress's prefix index (fed by that engine's KV events): new prompts until one lands
    there."""
    replica = nodes.replicas_by_node(f"{SPREAD}/colocated")[node.ip]
    for attempt in range(attempts):
        prompt = recall_prompt_text(random.Random(1000 * words + attempt), words, 10)
        reply = nodes.http.post("/v1/completions", json={
            "model": SPREAD, "prompt": prompt, "max_tokens": 1, "temperature": 0})
        assert reply.status_code == 200, reply.text
        tokens = nodes.http.post("/tokenize", json={"model": SPREAD, "prompt": prompt})
        token_ids = tokens.json()["tokens"]
        deadline = time.monotonic() + 10
        while True:  # KV events arrive within moments of the engine storing the blocks
            hits = nodes.probe("prefix_hits", model=SPREAD, role="colocated",
                               token_ids=token_ids, cache_salt=CACHE_SALT)
            if any(hits.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if hits.get(replica, 0) >= 4:
            return prompt, token_ids
    raise AssertionError(f"no prompt of {attempts} landed on node {node.name}")


def test_the_prefix_index_follows_both_nodes_and_routes_a_repeat_to_its_holder(
    nodes: TwoNodes,
) -> None:
    spread = nodes.replicas_by_node(f"{SPREAD}/colocated")
    assert set(spread) == {nodes.a.ip, nodes.b.ip}, spread
    held_on(nodes, nodes.a)  # each host's engine holds a prompt of its own
    prompt, token_ids = held_on(nodes, nodes.b)
    holder, other = spread[nodes.b.ip], spread[nodes.a.ip]
    routing = nodes.probe("routing")
    streams = {**routing[f"{PD}/prefill"]["streams"], **routing[f"{SPREAD}/colocated"]["streams"]}
    # events from both hosts: node a's prefill and colocated engines, node b's colocated one
    assert all(s["stored"] > 0 and s["errors"] == 0 for s in streams.values()), streams

    before = {r: nodes.metrics(f"{SPREAD}-colocated", r) for r in (holder, other)}
    repeats = 3
    for _ in range(repeats):
        reply = nodes.http.post("/v1/completions", json={
            "model": SPREAD, "prompt": prompt, "max_tokens": 2, "temperature": 0})
        assert reply.status_code == 200, reply.text
    after = {r: nodes.metrics(f"{SPREAD}-colocated", r) for r in (holder, other)}
    hits = (after[holder]["vllm:prompt_tokens_by_source_total:local_cache_hit"]
            - before[holder]["vllm:prompt_tokens_by_source_total:local_cache_hit"])
    served_elsewhere = (after[other]["vllm:request_success_total"]
                        - before[other]["vllm:request_success_total"])
    assert hits >= repeats * (len(token_ids) // BLOCK_SIZE - 1) * BLOCK_SIZE, hits
    assert served_elsewhere == 0, served_elsewhere


@dataclass
class Stream:
    """A streamed completion, read in a thread; `first_token` is set at its first token."""

    body: dict[str, Any]
    token_ids: list[int] = field(default_factory=list)
    status: int = 0
    error: str = ""
    first_token: threading.Event = field(default_factory=threading.Event)

    def run(self, http: httpx.Client) -> None:
        with http.stream("POST", "/v1/completions", json=self.body) as response:
            self.status = response.status_code
            for chunk in sse_chunks(response):
                if "error" in chunk:
                    self.error = json.dumps(chunk["error"])
                for choice in chunk.get("choices", []):
                    self.token_ids += choice.get("token_ids") or []
                if self.token_ids:
                    self.first_token.set()


def ray_workers(nodes: TwoNodes, node: Node) -> list[int]:
    """Pids of the node's Serve replicas and vLLM engines."""
    found = []
    for process in processes(nodes.cluster.pids(node)):
        try:
            command = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "ServeReplica" in command or "VLLM::" in command:
            found.append(process.pid)
    return found


def test_losing_node_bs_raylet_loses_no_request_and_refuses_what_it_cannot_serve(
    nodes: TwoNodes,
) -> None:
    prompt, _ = held_on(nodes, nodes.b, words=RESUME_WORDS)
    body = {"model": SPREAD, "prompt": prompt, "max_tokens": RESUME_TOKENS, "temperature": 0,
            "return_token_ids": True}
    undisturbed = nodes.http.post("/v1/completions", json=body)
    assert undisturbed.status_code == 200, undisturbed.text
    reference = undisturbed.json()["choices"][0]["token_ids"]
    assert len(reference) == RESUME_TOKENS
    assert ray_workers(nodes, nodes.b)

    # a stream on node b's engine (it holds the prompt), node b's raylet killed mid-stream:
    # the stream completes, token for token, on node b (whose workers outlive their raylet for
    # some seconds) or resumed on node a (if they die first)
    stream = Stream({**body, "stream": True})
    reader = threading.Thread(target=stream.run, args=(nodes.http,))
    reader.start()
    assert stream.first_token.wait(60), (stream.status, stream.error)
    killed = nodes.cluster.kill(nodes.b, names=["raylet"])
    reader.join(300)
    assert killed and not reader.is_alive()
    assert stream.status == 200 and not stream.error, (stream.status, stream.error)
    assert stream.token_ids == reference

    # Ray takes the node's replicas and engines down with their raylet
    deadline = time.monotonic() + 180
    while ray_workers(nodes, nodes.b):
        assert time.monotonic() < deadline, ray_workers(nodes, nodes.b)
        time.sleep(1)
    # then node a's engine serves the colocated model alone, the prompt node b held included
    for _ in range(3):
        reply = nodes.http.post("/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["token_ids"] == reference
    # the PD model's only decode engine was on node b, and its replica cannot come back
    # (it needs `host_b`): once the ingress sees the pool empty, a clear, retryable 503
    deadline = time.monotonic() + 120
    while nodes.http.get("/v1/pools").json()[f"{PD}/decode"]["replicas"] != 0:
        assert time.monotonic() < deadline, nodes.http.get("/v1/pools").json()
        time.sleep(2)
    started = time.monotonic()
    refused = nodes.http.post("/v1/completions", json={
        "model": PD, "prompt": " ".join(["warm up"] * 40), "max_tokens": 4})
    assert refused.status_code == 503, refused.text
    assert "retry later" in refused.json()["error"]["message"], refused.text
    assert time.monotonic() - started < COLD_START_S + 30
    health = nodes.http.get("/health")  # the server still answers, and says so
    assert health.status_code in (200, 503) and "status" in health.json(), health.text
