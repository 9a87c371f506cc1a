"""Check several engine replicas per pool on one host, and measure their idle CPU.

Serves one PD model with 2 prefill + 2 decode replicas (4 x 0.5 CPU), sends recall prompts,
then measures how much CPU the engine processes burn while idle (NIXL's progress thread).

    .venv/bin/python -m pdserve.benchmarks.multi_replica_check
"""

from __future__ import annotations

import random
import time

import httpx
import psutil
import ray
from ray import serve

from pdserve.deployments.app import build_app
from pdserve.models import resolve_model
from pdserve.tiny_model import recall_prompt_text

PORT = 8125
ENGINE_KWARGS = {"dtype": "float32", "max_model_len": 1024, "max_num_batched_tokens": 256,
                 "block_size": 32, "kv_cache_memory_bytes": 128 * 2**20, "enforce_eager": True}


def idle_cpu_seconds(window_s: float) -> dict[str, float]:
    """CPU-seconds each vLLM process used over `window_s` of idleness."""
    procs = [p for p in psutil.process_iter(["name"]) if "VLLM" in (p.info["name"] or "")]
    before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
    time.sleep(window_s)
    return {f"{p.pid}:{p.name()}": round(sum(p.cpu_times()[:2]) - before[p.pid], 2)
            for p in procs if p.is_running()}


def main() -> None:
    args = {"models": [{"model_id": "pd", "model": resolve_model("pdserve://tiny"), "mode": "pd",
                        "engine_kwargs": ENGINE_KWARGS, "prefill": {"num_replicas": 2},
                        "decode": {"num_replicas": 2}}]}
    ray.init(num_cpus=2)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    started = time.monotonic()
    serve.run(build_app(args), name="pdserve", route_prefix="/")
    print(f"up after {time.monotonic() - started:.0f} s", flush=True)
    rng = random.Random(3)
    ok = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=300) as client:
        for _ in range(16):
            reply = client.post("/v1/completions", json={
                "model": "pd", "prompt": recall_prompt_text(rng, 60, 10), "max_tokens": 8,
                "temperature": 0})
            ok += reply.status_code == 200 and bool(reply.json()["choices"][0]["text"].strip())
    counts = serve.get_app_handle("pdserve").stats.remote().result()
    print(f"{ok}/16 requests answered; ingress counts {counts}")
    time.sleep(5)
    print("idle CPU-s over 20 s per vLLM process:", idle_cpu_seconds(20.0))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
