"""Two models and your own deployment, composed in Python instead of YAML.

    .venv/bin/python serve_configs/python_composition.py        # starts, asks, prints, stops
    serve run serve_configs.python_composition:app               # or keep it serving

`pdserve.build_app` turns the pydantic config into a Ray Serve `Application` (the OpenAI
ingress bound to every model's pools); `Compare` is ordinary user code that calls it through
a `DeploymentHandle` (`create_completion` takes and returns OpenAI bodies). `serve.run` takes
no application-level autoscaling policy, so here each autoscaled pool scales on its own with
pdserve's per-pool SLO policy (no P:D ratio, no shared budget: use a YAML config for those).
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from pdserve import AppConfig, ModelConfig, PoolConfig, SLOTargets, build_app

ENGINE = {"dtype": "float32", "max_model_len": 1024, "max_num_batched_tokens": 256,
          "block_size": 32, "kv_cache_memory_bytes": 256 * 2**20, "enforce_eager": True}
ENGINE_CPUS = {"num_cpus": 0.5}

config = AppConfig(
    models=[
        ModelConfig(model_id="tiny", model="pdserve://tiny", mode="pd", engine_kwargs=ENGINE,
                    prefill=PoolConfig(ray_actor_options=ENGINE_CPUS),
                    decode=PoolConfig(ray_actor_options=ENGINE_CPUS)),
        ModelConfig(
            model_id="tiny-colo", model="pdserve://tiny", mode="colocated", engine_kwargs=ENGINE,
            slo=SLOTargets(ttft_ms=3000, itl_ms=300),
            colocated=PoolConfig(ray_actor_options=ENGINE_CPUS, autoscaling_config={
                "min_replicas": 1, "max_replicas": 2, "metrics_interval_s": 2,
                "upscale_delay_s": 10, "downscale_delay_s": 60}),
        ),
    ],
)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Compare:
    """Your logic: ask both models the same thing, return both answers side by side."""

    def __init__(self, llm: DeploymentHandle) -> None:
        self.llm = llm

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        answers = await asyncio.gather(*(
            self.llm.create_completion.remote(
                {"model": model, "prompt": body["prompt"], "max_tokens": 12, "temperature": 0})
            for model in ("tiny", "tiny-colo")
        ))
        return {answer.get("model", "error"): answer["choices"][0]["text"]
                if "choices" in answer else answer for answer in answers}


app = Compare.bind(build_app(config))


def main() -> int:
    serve.run(app, name="compare", route_prefix="/compare")
    prompt = "the cat sat on the mat. the cat sat on the"
    request = urllib.request.Request(
        "http://127.0.0.1:8000/compare", data=json.dumps({"prompt": prompt}).encode(),
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        answers = json.loads(response.read())
    print(json.dumps(answers, indent=2))
    serve.shutdown()
    ok = set(answers) == {"tiny", "tiny-colo"} and all(
        isinstance(text, str) and text for text in answers.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
