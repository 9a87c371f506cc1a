"""The failure tests' cluster: one PD model with a prefill replica and two decode replicas,
served by `serve run` of a YAML config in a cluster of its own, started once for every module
that kills, stops or drains something in it (`failover_app` in conftest). Starting it took
~4 minutes on 2 cores, so the modules share it: the ingress-failover module runs first (it adds
an ingress replica, then removes it), the resume module after it (it ends with `ray stop`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from pdserve.benchmarks import systems

MODEL = "tiny-r"
URL = systems.PDSERVE_URL
PREFILL, DECODE, INGRESS = f"{MODEL}-prefill", f"{MODEL}-decode", "ingress"
ENGINE = {"dtype": "float32", "max_model_len": 1024, "max_num_batched_tokens": 256,
          "block_size": 32, "kv_cache_memory_bytes": 128 * 2**20, "enforce_eager": True,
          "seed": 0}
STALL_S = 5


def config(model_dir: str) -> dict[str, Any]:
    pool = {"ray_actor_options": {"num_cpus": 0.5}}
    return systems.serve_config_doc({
        "models": [{
            "model_id": MODEL, "model": model_dir, "mode": "pd", "engine_kwargs": ENGINE,
            "prefill": {**pool, "num_replicas": 1},
            "decode": {**pool, "num_replicas": 2, "health_check_period_s": 1},
            # a killed prefill replica's queued calls fall back to local prefill quickly
            "kv_transfer": {"prefill_timeout_s": 5},
            # every prompt (and every continuation) is planned for the prefill pool, whatever
            # the decode replicas cache: the PD path of a resume is then certain
            "routing": {"local_prefill_below_tokens": 0, "max_prefill_queue_per_replica": 1000},
            "resume": {"max_attempts": 3},
            "health": {"stall_timeout_s": STALL_S},
        }],
    })


def redeploy(app: Path, replicas: dict[str, int], name: str) -> None:
    """`serve deploy` of the cluster's config with these deployments' `num_replicas` overridden
    (none: as first deployed), a config change only, so Ray restarts no other replica. Run in
    this process, so that it takes no interpreter start."""
    import yaml
    from ray.serve.scripts import cli

    doc = yaml.safe_load((app.parent / "config.yaml").read_text())
    doc["applications"][0]["deployments"] = [
        {"name": deployment, "num_replicas": n} for deployment, n in replicas.items()]
    path = app.parent / f"config-{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    cli.main(["deploy", str(path)], standalone_mode=False)


def ingress_pids() -> list[int]:
    """Process ids of the live ingress replicas."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", f"ServeReplica:pdserve:{INGRESS}"),
                                  ("state", "=", "ALIVE")])
    return [a.pid for a in actors]


def wait_for_every_replica(timeout_s: float = 600) -> None:
    """Until the ingress routes to every engine replica (a killed one is back) and follows its
    KV events."""
    from conftest import busiest_processes, routing_state

    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=URL, timeout=300) as http:
        while True:
            body = {"model": MODEL, "prompt": " ".join(["warm up"] * 40), "max_tokens": 1}
            assert http.post("/v1/completions", json=body).status_code == 200
            pools = routing_state()
            counts = {name: len(pools.get(f"{MODEL}/{role}", {}).get("streams", {}))
                      for name, role in ((PREFILL, "prefill"), (DECODE, "decode"))}
            if counts == {PREFILL: 1, DECODE: 2}:
                return
            assert time.monotonic() < deadline, f"replicas never all up: {pools}\n" \
                                                f"{busiest_processes()}"
            time.sleep(2)
