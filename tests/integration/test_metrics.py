"""pdserve's and vLLM's metrics reach Ray's Prometheus endpoint (names get Ray's `ray_` prefix)."""

from __future__ import annotations

import time

import httpx
from client import post
from shapes import METRICS_PORT, PD_MODEL

EXPECTED = [
    f'ray_pdserve_requests_total{{.*model="{PD_MODEL}".*outcome="ok"',
    'ray_pdserve_prefill_fallbacks_total{.*reason="error"',
    "ray_pdserve_ttft_seconds_bucket{",
    "ray_pdserve_itl_seconds_bucket{",
    "ray_pdserve_e2e_seconds_bucket{",
    'ray_vllm[:_]prompt_tokens_by_source(_total)?{.*source="external_kv_transfer"',
]


def test_pdserve_and_vllm_metrics_are_exported_through_ray(client: httpx.Client) -> None:
    import re

    body = {"model": PD_MODEL, "prompt": "the river and the stone", "max_tokens": 4,
            "temperature": 0.0, "stream": True}
    assert post(client, "/v1/completions", body).status == 200
    failed = {**body, "stream": False, "vllm_xargs": {"pdserve_fail_prefill": 1}}
    assert post(client, "/v1/completions", failed).status == 200
    missing = EXPECTED
    deadline = time.monotonic() + 90  # Ray's agent scrapes workers every ~10 s
    while missing and time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
        missing = [pattern for pattern in EXPECTED if not re.search(pattern, text)]
        time.sleep(3)
    assert not missing, f"not exported: {missing}"
