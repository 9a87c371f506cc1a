"""The Grafana dashboard (`docs/grafana-dashboard.json`) shows data from a running graph: after
one request of each kind (PD, a repeated PD prompt, local prefill, fallback, colocated,
pipeline), every panel's query selects series Ray's metrics endpoint exports, with the labels
it groups and joins by (the autoscaling panels: `test_autoscale_e2e.py`). And vLLM's KV
transfer bytes as Ray exports them equal what the decode engine's own registry counted.
"""

from __future__ import annotations

import secrets
import time

import httpx
from conftest import engine_metrics, metric_sum, replicas_of
from dashboard_check import (
    AUTOSCALING_PANELS,
    exported,
    missing,
    panels,
    selected_series,
    wait_for_series,
)
from prometheus_client.parser import text_string_to_metric_families
from shapes import COLOCATED_MODEL, METRICS_PORT, PD_MODEL, PIPELINE_LANCEDB

METRICS_URL = f"http://127.0.0.1:{METRICS_PORT}/metrics"
DECODE = f"{PD_MODEL}-decode"
LONG = "the decode pool pulls the prompt's KV from the prefill pool over NIXL " * 3


def test_the_query_parser_finds_series_and_labels() -> None:
    names, every, some = selected_series(
        'sum by (model, pool) (rate(ray_a_sum{x="y"}[1m]) * on (ReplicaId) '
        'group_left (model, pool) ray_b_info) / histogram_quantile(0.5, ray_c_bucket) * 1e3 '
        '+ ray_d offset 5m')
    assert names == {"ray_a_sum", "ray_b_info", "ray_c_bucket", "ray_d"}
    assert (every, some) == ({"ReplicaId"}, {"model", "pool"})
    series = {"ray_a_sum": {"ReplicaId"}, "ray_b_info": {"ReplicaId", "model", "pool"},
              "ray_c_bucket": {"ReplicaId", "le"}, "ray_d": {"ReplicaId"}}
    assert missing(['sum by (pool) (ray_a_sum) / sum by (pool) (ray_b_info)'], series) == [
        "label pool on ray_a_sum (in sum by (pool) (ray_a_sum) / sum by (pool) (ray_b_info))"]
    assert missing(["vector(1)"], series) == ["no series named (in vector(1))"]


def pulled_bytes(sample_name: str = "ray_vllm_nixl_bytes_transferred_sum") -> float:
    """The decode pool's NIXL bytes histogram (`_sum`, or `_count`: transfers) as Ray exports
    it, summed over its engines."""
    total = 0.0
    text = httpx.get(METRICS_URL, timeout=30).text
    replicas = set(replicas_of(DECODE))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and (
                    sample.labels.get("ReplicaId") in replicas):
                total += sample.value
    return total


def settled(sample_name: str = "ray_vllm_nixl_bytes_transferred_count", quiet_s: float = 25.0,
            timeout_s: float = 120.0) -> float:
    """The decode pool's exported NIXL bytes once unchanged for `quiet_s` (two of Ray's export
    intervals): Ray exports what the engines recorded with a delay."""
    value, since = pulled_bytes(sample_name), time.monotonic()
    deadline = since + timeout_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(2)
        now = pulled_bytes(sample_name)
        if now != value:
            value, since = now, time.monotonic()
    return value


def test_every_panel_has_data_after_one_request_of_each_kind(client: httpx.Client) -> None:
    prompt = f"{secrets.token_hex(4)} {LONG}"
    own_before = metric_sum(DECODE, "vllm:nixl_bytes_transferred_count")
    ray_before, ray_bytes_before = settled(), pulled_bytes()
    requests = [
        ("/v1/completions", {"model": PD_MODEL, "prompt": prompt}),  # PD
        ("/v1/completions", {"model": PD_MODEL, "prompt": prompt}),  # its prefix is cached now
        ("/v1/completions", {"model": PD_MODEL, "prompt": "the cat"}),  # local prefill
        ("/v1/completions", {"model": PD_MODEL, "prompt": f"{secrets.token_hex(4)} {LONG}",
                             "vllm_xargs": {"pdserve_fail_prefill": 1}}),  # fallback
        ("/v1/completions", {"model": COLOCATED_MODEL, "prompt": prompt}),
        ("/v1/chat/completions", {"model": PIPELINE_LANCEDB, "messages": [
            {"role": "user", "content": "Where does the decode pool get its KV from?"}]}),
    ]
    for path, body in requests:
        response = client.post(path, json={**body, "max_tokens": 8, "temperature": 0,
                                           "stream": True})  # streams: ITL samples too
        assert response.status_code == 200 and '"error"' not in response.text, response.text
    (decode_replica,) = replicas_of(DECODE)
    engine_series: dict[str, set[str]] = {}
    for (name, labels), _ in engine_metrics(DECODE, decode_replica).items():
        engine_series.setdefault(name, set()).update(k for k, _ in labels)
    queries = {title: exprs for title, exprs in panels().items()
               if title not in AUTOSCALING_PANELS}
    assert len(queries) >= 10, queries
    problems = wait_for_series(METRICS_URL, [e for exprs in queries.values() for e in exprs],
                               engine_series)
    assert not problems, problems
    # the exported KV transfers are vLLM's own, not a second count: over these requests Ray's
    # series counted the transfers the decode engine's registry counted, and its bytes grew.
    # (Not the bytes' sum itself: Ray 2.60's metrics agent rebuilds exported histograms at
    # bucket midpoints, so its `_sum` is an estimate, 0.8-1.9x the engine's in three runs.)
    own = metric_sum(DECODE, "vllm:nixl_bytes_transferred_count") - own_before
    assert own > 0
    assert settled() - ray_before == own
    assert pulled_bytes() > ray_bytes_before
    assert "ray_pdserve_engine_info" in exported(METRICS_URL)
