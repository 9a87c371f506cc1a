"""No request lost when a replica dies, hangs or is drained: real engines, real `kill -9`,
real `SIGSTOP`, real drains over HTTP, real `ray stop --force`.

One PD model with a prefill replica and two decode replicas, in the failure tests' cluster of
its own (`failover_cluster.py`: `serve run` of a YAML config, shared with the ingress-failover
module, which runs first). Streams and non-streamed requests are in flight when a decode replica
is killed: every request completes with exactly the undisturbed greedy tokens (no token lost
or repeated), resumed on the other decode replica, at least once over the PD path. Then the
prefill replica is killed under load: every request still answers correctly. A decode engine
core stopped with `SIGSTOP` is found stalled: its streams finish elsewhere, greedy-exact, and
Ray replaces the replica. A drained decode replica moves its live streams with their KV: the
other decode engine pulls it, the drained one computes at most one block per stream, and the
streams are greedy-exact. When a config change scales the decode pool down, the replica Ray
Serve stops drains itself the same way. Killed replicas' engine processes exit within seconds,
and after `ray stop --force` no vLLM or HAProxy process is left and the HTTP port is free.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from client import sse_chunks
from conftest import (
    deployment,
    ingress_stats,
    leftover_processes,
    metric_sum,
    port_is_free,
    replicas_of,
    routing_state,
)
from failover_cluster import (
    DECODE,
    ENGINE,
    MODEL,
    PREFILL,
    STALL_S,
    URL,
    ingress_pids,
    redeploy,
    wait_for_every_replica,
)
from prometheus_client.parser import text_string_to_metric_families

from pdserve.benchmarks import systems
from pdserve.deployments.app import ROUTING_STATS_PERIOD_S
from pdserve.deployments.config import KVTransferSettings
from pdserve.tiny_model import recall_prompt_text

pytestmark = pytest.mark.own_cluster

# The tiny model copies a 200-word span (452 prompt tokens) confidently for ~450 tokens: 400
# greedy tokens came out the same batched, alone and continued mid-way (vLLM offline). Streams
# must outlast what a test does between seeing them mid-way and disturbing them: six 150-token
# streams took ~0.6 s on an unloaded box, and five had ended before a drain (once all before a
# kill) reached their replica.
MAX_TOKENS = 400
STREAMS, FULL = 6, 2
BLOCK = ENGINE["block_size"]
PROMPTS = [recall_prompt_text(random.Random(100 + seed), 200, 10)
           for seed in range(STREAMS + FULL)]
#: a prefill whose answer is lost (cancelled past its deadline's grace as it finished, or with
#: its client) holds its KV until vLLM's lease frees it: waits for engines to be idle outlast it
KV_LEASE_S = KVTransferSettings().kv_lease_s


@pytest.fixture(scope="module")
def app(failover_app: Path) -> Path:
    """The failure tests' cluster; this module leaves it stopped (`ray stop --force`)."""
    # One ingress replica, as deployed (the ingress-failover module ran before and restored
    # it; its counters are what these tests compare), and its routers follow every engine.
    assert len(ingress_pids()) == 1, ingress_pids()
    wait_for_every_replica()
    return failover_app


@pytest.fixture(scope="module")
def reference(app: Path) -> list[list[int]]:
    """The undisturbed greedy tokens of `PROMPTS` (each disturbed run must match them)."""
    return undisturbed()


def remote_plans(stats: dict[str, int]) -> int:
    return sum(v for k, v in stats.items() if k.startswith("plan:remote:"))


@dataclass
class Request:
    prompt: str
    stream: bool
    token_ids: list[int] = field(default_factory=list)
    status: int = 0
    error: str = ""
    first_token: threading.Event = field(default_factory=threading.Event)

    def run(self, http: httpx.Client) -> None:
        body = {"model": MODEL, "prompt": self.prompt, "max_tokens": MAX_TOKENS,
                "temperature": 0, "return_token_ids": True, "stream": self.stream}
        try:
            if not self.stream:
                response = http.post("/v1/completions", json=body)
                self.status = response.status_code
                if self.status == 200:
                    self.token_ids = response.json()["choices"][0]["token_ids"]
                else:
                    self.error = response.text
                return
            with http.stream("POST", "/v1/completions", json=body) as response:
                self.status = response.status_code
                for chunk in sse_chunks(response):
                    if "error" in chunk:
                        self.error = json.dumps(chunk["error"])
                        continue
                    for choice in chunk.get("choices", []):
                        self.token_ids += choice.get("token_ids") or []
                    if self.token_ids:
                        self.first_token.set()
        except Exception as exc:  # recorded, asserted by the test
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.first_token.set()


def undisturbed() -> list[list[int]]:
    with httpx.Client(base_url=URL, timeout=600) as http, ThreadPoolExecutor(8) as pool:
        requests = [Request(p, stream=True) for p in PROMPTS]
        list(pool.map(lambda r: r.run(http), requests))
    assert all(r.status == 200 and not r.error for r in requests), [r.error for r in requests]
    assert all(len(r.token_ids) == MAX_TOKENS for r in requests)
    return [r.token_ids for r in requests]


def kill_replica(name: str, replica: str) -> list[int]:
    """`kill -9` the replica's process; the pids of its engine processes."""
    pids = deployment(name).engine_processes.remote(replica=replica).result()
    os.kill(pids[0], signal.SIGKILL)
    return pids[1:]


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, or a process that ends while it is read, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in pids if running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def resumes(stats: dict[str, int], path: str | None = None) -> int:
    return sum(v for k, v in stats.items() if k.startswith("resume:") and k.count(":") == 2
               and (path is None or k.endswith(f":{path}")))


@pytest.mark.timeout(1500)
def test_a_killed_decode_replica_loses_no_request(app: Path, reference: list[list[int]]) -> None:
    assert_all_drained()
    before = ingress_stats()[MODEL]
    prefills_before = metric_sum(PREFILL, "vllm:request_success_total")
    decodes = replicas_of(DECODE)
    pulled_before = {r: metric_sum(DECODE, "vllm:prompt_tokens_by_source_total", r,
                                   source="external_kv_transfer") for r in decodes}

    requests = [Request(p, stream=i < STREAMS) for i, p in enumerate(PROMPTS)]
    with httpx.Client(base_url=URL, timeout=600) as http, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(r.run, http) for r in requests]
        for r in requests[:STREAMS]:
            assert r.first_token.wait(300), "a stream never started"
        at_kill = [len(r.token_ids) for r in requests[:STREAMS]]
        in_flight = routing_state()[f"{MODEL}/decode"]["in_flight"]
        victim = max(decodes, key=lambda r: in_flight.get(r, 0))
        engine_pids = kill_replica(DECODE, victim)
        for future in futures:
            future.result()

    assert all(0 < n < MAX_TOKENS for n in at_kill), at_kill  # each stream was mid-way
    assert in_flight.get(victim, 0) >= 1, in_flight
    failures = [(r.status, r.error) for r in requests if r.status != 200 or r.error]
    assert not failures, failures
    for r, want in zip(requests, reference, strict=True):  # no token lost, none repeated
        assert r.token_ids == want, (r.stream, len(r.token_ids))
    assert not wait_gone(engine_pids, 15), "the killed replica's engine outlived it"

    after = ingress_stats()[MODEL]
    resumed, over_pd = resumes(after) - resumes(before), (resumes(after, "remote")
                                                          - resumes(before, "remote"))
    assert resumed >= 1 and over_pd >= 1, after
    # the prefill engine ran every burst prompt once, plus each continuation sent to it...
    prefills = metric_sum(PREFILL, "vllm:request_success_total") - prefills_before
    assert remote_plans(after) - remote_plans(before) == len(PROMPTS) + over_pd, after
    assert prefills == len(PROMPTS) + over_pd, (prefills, after)
    # ...and the surviving decode engine pulled it (the continuation's prompt, over NIXL)
    (survivor,) = [r for r in decodes if r != victim]
    pulled = metric_sum(DECODE, "vllm:prompt_tokens_by_source_total", survivor,
                        source="external_kv_transfer") - pulled_before[survivor]
    longest_prompt = max(len(r) for r in PROMPTS) * 3
    assert pulled > longest_prompt, pulled
    waits = deployment_stats_waits()
    print(f"resume: {len(requests)} requests in flight ({STREAMS} streams), {resumed} resumed "
          f"({over_pd} over PD), tokens delivered before kill {at_kill}, "
          f"recomputed {after.get('resume_recomputed_tokens', 0)}, resume s {waits}")
    # (Ray replaces the killed replica while the next test runs; that test waits for it)
    assert_all_drained()


def deployment_stats_waits() -> list[float]:
    from ray import serve

    return serve.get_app_handle("pdserve").resume_waits.remote().result()[MODEL]


def assert_all_drained(timeout_s: float = KV_LEASE_S + 15) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states = {f"{n}/{r}": deployment(n).drained.remote(replica=r).result()
                  for n in (PREFILL, DECODE) for r in replicas_of(n)}
        if all(s == {"unfinished_requests": 0, "engine_core_has_work": False,
                     "all_kv_blocks_free": True} for s in states.values()):
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.5)


@pytest.mark.timeout(1500)
def test_a_killed_prefill_replica_under_load_loses_no_request(
        app: Path, reference: list[list[int]]) -> None:
    assert_all_drained()
    (victim,) = replicas_of(PREFILL)
    requests = [Request(p, stream=i % 2 == 0) for i, p in enumerate(PROMPTS)]
    with httpx.Client(base_url=URL, timeout=600) as http, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(r.run, http) for r in requests]
        time.sleep(0.3)  # prefills are queued or running on the victim
        engine_pids = kill_replica(PREFILL, victim)
        for future in futures:
            future.result()
    failures = [(r.status, r.error) for r in requests if r.status != 200 or r.error]
    assert not failures, failures
    for r, want in zip(requests, reference, strict=True):
        assert r.token_ids == want, (r.stream, len(r.token_ids))
    assert not wait_gone(engine_pids, 15), "the killed replica's engine outlived it"
    wait_for_every_replica()
    assert_all_drained()


def streams_in_flight(http: httpx.Client, pool: ThreadPoolExecutor,
                      prompts: list[str] = PROMPTS) -> tuple[list[Request], list]:
    """Every prompt as a stream, each past its first token when this returns."""
    requests = [Request(p, stream=True) for p in prompts]
    futures = [pool.submit(r.run, http) for r in requests]
    for r in requests:
        assert r.first_token.wait(300), "a stream never started"
    return requests, futures


def engine_core_pid(name: str, replica: str) -> int:
    pids = deployment(name).engine_processes.remote(replica=replica).result()
    (core,) = [p for p in pids[1:] if psutil.Process(p).name().startswith("VLLM::EngineCore")]
    return core


def assert_exact(requests: list[Request], reference: list[list[int]]) -> None:
    failures = [(r.status, r.error) for r in requests if r.status != 200 or r.error]
    assert not failures, failures
    for r, want in zip(requests, reference, strict=True):  # no token lost, none repeated
        assert r.token_ids == want, (r.stream, len(r.token_ids))


@pytest.mark.timeout(900)
def test_a_stopped_decode_engine_is_found_stalled_its_streams_resume_and_it_is_replaced(
        app: Path, reference: list[list[int]]) -> None:
    assert_all_drained()
    before = ingress_stats()[MODEL]
    decodes = replicas_of(DECODE)
    with httpx.Client(base_url=URL, timeout=600) as http, ThreadPoolExecutor(8) as pool:
        requests, futures = streams_in_flight(http, pool)
        in_flight = routing_state()[f"{MODEL}/decode"]["in_flight"]
        victim = max(decodes, key=lambda r: in_flight.get(r, 0))
        core = engine_core_pid(DECODE, victim)
        os.kill(core, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            for future in futures:
                future.result()
            finished_s = time.monotonic() - stopped_at
            assert_exact(requests, reference)
            deadline = time.monotonic() + 120
            while victim in replicas_of(DECODE):  # Ray replaces it: its health check fails
                assert time.monotonic() < deadline, "the stalled replica was never replaced"
                time.sleep(1)
            replaced_s = time.monotonic() - stopped_at
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(core, signal.SIGCONT)
    assert not wait_gone([core], 30), "the stalled engine outlived its replica"
    wait_for_every_replica()
    assert_all_drained()
    after = ingress_stats()[MODEL]

    def resumed(reason: str) -> int:
        return sum(v - before.get(k, 0) for k, v in after.items()
                   if k.startswith(f"resume:{reason}:"))

    # Every stream came back whole (above). The watchdog found the stall; how many streams
    # it resumed is the run's to decide: the in-flight count is read before the SIGSTOP (a
    # stream may end in between: 2 of 4 in a clean-clone run), and one the watchdog has not
    # reached when Ray's health check replaces the replica resumes as `replica_died`.
    stalled, died = resumed("stalled"), resumed("replica_died")
    assert in_flight.get(victim, 0) >= 1, in_flight
    assert stalled >= 1, (after, in_flight)
    print(f"stall: {stalled} streams resumed after {STALL_S} s without a step ({died} as their "
          f"replica died); all done {finished_s:.1f} s after SIGSTOP, replica replaced after "
          f"{replaced_s:.1f} s")


def drain(replica: str, **body: Any) -> dict[str, Any]:
    with httpx.Client(base_url=URL, timeout=600) as http:
        response = http.post("/v1/admin/drain", json={"model": MODEL, "replica": replica, **body})
    assert response.status_code == 200, response.text
    return response.json()


def local_compute(handle: Any, replica: str) -> float:
    """Prompt tokens the replica's engine computed itself (vLLM's own counter), through a
    handle made beforehand."""
    text = handle.vllm_metrics.remote(replica=replica).result()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "vllm:prompt_tokens_by_source_total"
               and sample.labels.get("source") == "local_compute")


def undrain(replica: str) -> None:
    with httpx.Client(base_url=URL, timeout=60) as http:
        response = http.post("/v1/admin/undrain", json={"model": MODEL, "replica": replica})
    assert response.status_code == 200, response.text


@pytest.mark.timeout(900)
def test_a_drained_decode_replica_moves_its_streams_with_their_kv(
        app: Path, reference: list[list[int]]) -> None:
    assert_all_drained()
    victim, target = replicas_of(DECODE)
    try:
        drain_moves_streams(victim, target, reference[:STREAMS])
    finally:  # the next tests need both (a replica left drained turns every stream away)
        for replica in (victim, target):
            undrain(replica)
    assert_all_drained()


def drain_moves_streams(victim: str, target: str, reference: list[list[int]]) -> None:
    before = ingress_stats()[MODEL]
    pulled_before = metric_sum(DECODE, "vllm:nixl_bytes_transferred_sum", target)
    computed_before = local_compute(deployment(DECODE), victim)
    with httpx.Client(base_url=URL, timeout=600) as http, ThreadPoolExecutor(8) as pool:
        # The streams start while the target is drained (it holds nothing yet), then it is
        # undrained to take them over. The routers learn of a drain with the next routing
        # stats: until then it would turn streams away. Six streams, and nothing between their
        # first tokens and the drain: streams that end before the drain reaches the victim
        # are not moved (see `MAX_TOKENS`). The undrain goes out as soon as the streams are
        # sent; the routers see it with their next routing stats, within a period, so a stream
        # routed later (decode is routed after its prefill) may land on the target: the
        # victim's share is checked below, at least half.
        drained_first = drain(target)
        # (the replica that answered: a pinned call delivered to the other one would explain
        # streams found on the drained replica, a flake seen in CI)
        assert drained_first["replica"] == target and drained_first["asked"] == 0, drained_first
        time.sleep(2 * ROUTING_STATS_PERIOD_S + 1)
        requests = [Request(p, stream=True) for p in PROMPTS[:STREAMS]]
        try:
            futures = [pool.submit(r.run, http) for r in requests]
        finally:
            undrain(target)
        for r in requests:
            assert r.first_token.wait(300), "a stream never started"
        at_drain = [len(r.token_ids) for r in requests]
        result = drain(victim)
        for future in futures:
            future.result()
    assert_exact(requests, reference)
    assert all(0 < n < MAX_TOKENS for n in at_drain), at_drain  # each was mid-way
    assert result["replica"] == victim, (result, victim)
    moved = result["moved_kv"]
    assert moved == result["asked"] >= STREAMS // 2 and result["still_running"] == 0, result
    after = ingress_stats()[MODEL]
    handoffs = sum(v - before.get(k, 0) for k, v in after.items()
                   if k.startswith("resume:draining:handoff"))
    assert handoffs == moved, after
    pulled = metric_sum(DECODE, "vllm:nixl_bytes_transferred_sum", target) - pulled_before
    assert pulled > 0, pulled
    # what the drained engine computed to hand the KV off: at most one block per stream, by
    # its own report and by vLLM's counter (which also holds the streams' own prompts:
    # cached on this replica from the reference run, or computed here when planned local)
    assert result["recomputed_tokens"] <= moved * BLOCK, result
    computed = local_compute(deployment(DECODE), victim) - computed_before
    assert computed >= result["recomputed_tokens"], (computed, result)
    # a drained replica takes nothing new until it is undrained
    served_before = metric_sum(DECODE, "vllm:request_success_total", victim)
    with httpx.Client(base_url=URL, timeout=600) as http:
        for prompt in PROMPTS[:3]:
            body = {"model": MODEL, "prompt": prompt, "max_tokens": 5, "temperature": 0}
            assert http.post("/v1/completions", json=body).status_code == 200
        assert metric_sum(DECODE, "vllm:request_success_total", victim) == served_before
        unknown = http.post("/v1/admin/drain", json={"model": MODEL, "replica": "nope"})
        assert unknown.status_code == 404 and "replicas" in unknown.json()["error"]["message"]
    print(f"drain: {moved} of {STREAMS} streams moved with their KV "
          f"({pulled / 2**20:.1f} MiB pulled, "
          f"{computed:.0f} tokens computed by the drained engine), tokens at drain {at_drain}")


def scale_decode_to(replicas: int, app: Path) -> None:
    """`serve deploy` of the cluster's config with the decode pool at `replicas`."""
    redeploy(app, {DECODE: replicas}, f"decode-{replicas}")


@pytest.mark.timeout(900)
def test_a_decode_replica_ray_serve_stops_loses_nothing(
        app: Path, reference: list[list[int]]) -> None:
    expected = dict(zip(PROMPTS, reference, strict=True))
    assert_all_drained()
    before = ingress_stats()[MODEL]
    decodes = replicas_of(DECODE)
    finished: list[Request] = []
    enough = threading.Event()

    def keep_streaming(prompt: str, http: httpx.Client, delay_s: float) -> None:
        """Streams, one after another, from `delay_s` on: some are in flight whenever Ray stops
        a replica (it rebuilds the app first, which took 60-80 s here under load)."""
        enough.wait(delay_s)
        while not enough.is_set():
            request = Request(prompt, stream=True)
            request.run(http)
            finished.append(request)

    # Four at a time (two per decode replica, and CPU left for Ray's rebuild), staggered by
    # about a quarter of a stream (~7 s): Ray routes nothing new to a replica it stops, and
    # ~1.5 s pass before the replica sees it. Started together, all four once ended in that
    # gap, and the stopped replica had no stream left to move.
    with httpx.Client(base_url=URL, timeout=600) as http, ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(keep_streaming, p, http, 2.0 * i) for i, p in enumerate(PROMPTS[:4])]
        asked_at = time.monotonic()
        scale_decode_to(1, app)  # Ray Serve picks the replica it stops
        deadline = time.monotonic() + 300
        while len(remaining := replicas_of(DECODE)) != 1:  # it leaves the set as it starts to stop
            assert time.monotonic() < deadline, remaining
            time.sleep(0.5)
        stopping_s = time.monotonic() - asked_at
        enough.set()
        for future in futures:
            future.result()
    failures = [(r.status, r.error) for r in finished if r.status != 200 or r.error]
    assert not failures, failures
    for r in finished:  # no token lost, none repeated
        assert r.token_ids == expected[r.prompt], len(r.token_ids)
    (stopped,) = set(decodes) - set(remaining)
    after = ingress_stats()[MODEL]
    moved = {k: v - before.get(k, 0) for k, v in after.items()
             if k.startswith("resume:draining:") and v != before.get(k, 0)}
    # Whether a stream is still mid-way on the stopped replica when it notices the stop is up
    # to timing (CI once found none: streams that end in between finish in place), so the
    # hand-offs are reported, not asserted; the drain test asserts the KV move itself.
    print(f"scale-down: Ray Serve began stopping {stopped} {stopping_s:.0f} s after `serve "
          f"deploy`; live streams moved off it {moved}; {len(finished)} streams, all "
          f"greedy-exact")
    assert_all_drained()


@pytest.mark.stops_cluster
def test_ray_stop_force_leaves_no_vllm_or_haproxy_process(app: Path) -> None:
    # one prefill and one decode replica are left (the scale-down above), each with its engine
    import ray

    assert len(leftover_processes(engines_only=True)) >= 2, leftover_processes(engines_only=True)
    # the cluster serves HTTP through Ray's HAProxy, started by pdserve's launcher (Ray 2.60's
    # own HAProxy outlived `ray stop --force` in this very setup: `serve run` starting Ray)
    port = httpx.URL(URL).port
    assert haproxy_processes(), "no HAProxy serves the cluster"
    # A driver exits when its raylet dies (this one once took pytest with it): disconnect
    # first, as the shell of an operator who runs `ray stop --force` is no driver.
    ray.shutdown()
    subprocess.run([str(systems.VENV_BIN / "ray"), "stop", "--force"], check=False,
                   capture_output=True, timeout=120)
    deadline = time.monotonic() + 20
    while ((leftover_processes(engines_only=True) or haproxy_processes())
           and time.monotonic() < deadline):
        time.sleep(0.5)
    assert not leftover_processes(engines_only=True), leftover_processes(engines_only=True)
    assert not haproxy_processes(), haproxy_processes()
    assert port_is_free(port)  # the next start can take the HTTP port


def haproxy_processes() -> list[str]:
    """Ray Serve's HAProxy processes still running (config under Ray's `/tmp/haproxy-serve`;
    a zombie has exited and waits for its new parent to reap it)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if (proc.info["name"] == "haproxy" and "/haproxy-serve/" in cmdline
                and proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(f"{proc.pid} {cmdline[:120]}")
    return found
