"""Two ingress replicas share the load; when one is killed (`kill -9`) mid-stream, the service
goes on through the other, and the engines abort the requests the dead one had in flight (no
orphan keeps generating for a client that is gone). Real engines, in the failure tests' cluster
of its own (`failover_cluster.py`: one prefill and two decode replicas, so the spread of streams
over the decode replicas, each ingress booking only its own requests, is measured too). The
ingress pool grows to two by a config change (`serve deploy`) and goes back to one afterwards,
for the resume module that follows.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from client import sse_chunks
from conftest import deployment, replicas_of
from failover_cluster import (
    DECODE,
    INGRESS,
    MODEL,
    URL,
    ingress_pids,
    redeploy,
    wait_for_every_replica,
)

from pdserve.tiny_model import recall_prompt_text

pytestmark = pytest.mark.own_cluster

MAX_TOKENS = 400  # long enough that no stream can end by itself while the test looks
STREAMS = 8
PROMPTS = [recall_prompt_text(random.Random(100 + seed), 60, 10) for seed in range(STREAMS)]


@pytest.fixture(scope="module")
def app(failover_app: Path) -> Iterator[Path]:
    """The failure tests' cluster with two ingress replicas; one again when the module ends
    (the resume module reads one ingress replica's counters), whatever happened."""
    try:
        redeploy(failover_app, {INGRESS: 2}, "ingress-2")
        wait_for_ingress_replicas(2)
        yield failover_app
    finally:
        redeploy(failover_app, {}, "as-deployed")
        wait_for_ingress_replicas(1)
        wait_for_every_replica()


def wait_for_ingress_replicas(count: int, timeout_s: float = 300) -> None:
    """Until Ray Serve runs exactly `count` ingress replicas (a starting one takes no traffic
    from the proxy yet) and no other is left alive."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        states = {getattr(state, "value", state): n for state, n in serve.status()
                  .applications["pdserve"].deployments[INGRESS].replica_states.items()}
        if states == {"RUNNING": count} and len(ingress_pids()) == count:
            return
        assert time.monotonic() < deadline, f"ingress replicas {states}, want {count}"
        time.sleep(1)


@dataclass
class Stream:
    prompt: str
    tokens: int = 0
    finish_reason: str | None = None
    status: int = 0
    error: str = ""
    done: bool = False
    started: threading.Event = field(default_factory=threading.Event)

    def run(self, http: httpx.Client) -> None:
        body = {"model": MODEL, "prompt": self.prompt, "max_tokens": MAX_TOKENS,
                "temperature": 0, "ignore_eos": True, "stream": True}
        try:
            with http.stream("POST", "/v1/completions", json=body) as response:
                self.status = response.status_code
                for chunk in sse_chunks(response):
                    if "error" in chunk:
                        self.error = json.dumps(chunk["error"])
                    for choice in chunk.get("choices", []):
                        self.tokens += bool(choice.get("text"))
                        self.finish_reason = choice.get("finish_reason") or self.finish_reason
                    self.started.set()
        except Exception as exc:  # the connection through the killed ingress breaks
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done = True
            self.started.set()


def unfinished_per_decode_replica() -> list[int]:
    """Requests each decode engine holds now (its output processor's count), busiest first."""
    return sorted((deployment(DECODE).drained.remote(replica=r).result()["unfinished_requests"]
                   for r in decode_replicas()), reverse=True)


def spread_of_streams(count: int) -> list[int]:
    """How `count` live streams sit on the decode replicas, once all have reached decode."""
    deadline = time.monotonic() + 60
    while sum(spread := unfinished_per_decode_replica()) < count:
        assert time.monotonic() < deadline, spread
        time.sleep(0.2)
    return spread


def decode_replicas() -> list[str]:
    deadline = time.monotonic() + 120
    while len(replicas := replicas_of(DECODE)) < 2:  # this ingress replica's view
        assert time.monotonic() < deadline, replicas
        time.sleep(1)
    return replicas


def unfinished_on_decode() -> int:
    return sum(unfinished_per_decode_replica())


@pytest.mark.timeout(1500)  # its set-up starts the shared cluster (~4 min, more when busy)
def test_a_killed_ingress_replica_leaves_no_orphan_request_and_the_service_goes_on(
        app: Path) -> None:
    assert len(ingress_pids()) == 2
    assert unfinished_per_decode_replica() == [0, 0]  # (a handle's first call is slow)
    streams = [Stream(p) for p in PROMPTS]
    with httpx.Client(base_url=URL, timeout=600) as http, ThreadPoolExecutor(STREAMS) as pool:
        futures = [pool.submit(s.run, http) for s in streams]
        for s in streams:
            assert s.started.wait(300), "a stream never started"
        failed = [(s.status, s.error) for s in streams if s.done]
        assert not failed, failed
        spread = spread_of_streams(STREAMS)  # two ingresses, each booking only its own
        victim = ingress_pids()[0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(5)  # the engines notice the callers' streams are gone
        alive = len([s for s in streams if not s.done])
        running = unfinished_on_decode()
        still_alive = len([s for s in streams if not s.done])
        for future in futures:
            future.result()

    broken = [s for s in streams if s.status != 200 or s.error or s.finish_reason != "length"]
    print(f"ingress kill: spread {spread}; broken {[(s.tokens, s.error[:80]) for s in broken]}; "
          f"5 s later the decode engines ran {running} requests for {alive} live clients "
          f"({still_alive} still live after counting)")
    assert sum(spread) == STREAMS and spread[0] <= STREAMS - 2, spread  # both replicas used
    assert broken, "no stream went through the killed ingress replica"
    assert len(broken) < STREAMS, "no stream went through the surviving ingress replica"
    # every request the engines still run belongs to a client still reading
    assert alive < STREAMS, "the killed ingress replica's clients had not seen it die yet"
    assert still_alive <= running <= alive, (running, alive, still_alive)
    # the service goes on: new requests are answered, and Ray restarts the ingress replica
    with httpx.Client(base_url=URL, timeout=300) as http:
        for prompt in PROMPTS[:4]:
            body = {"model": MODEL, "prompt": prompt, "max_tokens": 5}
            assert http.post("/v1/completions", json=body).status_code == 200
    deadline = time.monotonic() + 180
    while len(ingress_pids()) < 2 or victim in ingress_pids():
        assert time.monotonic() < deadline, "Ray never restarted the killed ingress replica"
        time.sleep(2)
    deadline = time.monotonic() + 30
    while (left := unfinished_on_decode()) != 0:
        assert time.monotonic() < deadline, left
        time.sleep(0.5)
    print(f"ingress kill: {STREAMS} streams over 2 ingress replicas ran {spread} on the 2 "
          f"decode replicas; {len(broken)} went through the killed ingress replica; 5 s later "
          f"the decode engines ran {running} requests for {alive} live clients")
