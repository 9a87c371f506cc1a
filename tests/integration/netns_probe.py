"""A Ray driver on a node of the network-namespace cluster, for the multi-node tests.

A test process in the root namespace is not a Ray node, so it cannot hold Serve handles. This
script runs on the head node (`NetnsCluster.command`), connects to the cluster and answers one
JSON command per stdin line with one line on stdout, `PROBE ` and a JSON document (Ray
prints its own notices on stdout too, a node's death for one):
  {"call": "routing"}                                   the ingress's routing snapshot
  {"call": "stats"}                                     the ingress's counters
  {"call": "prefix_hits", "model": m, "role": r, "token_ids": [...], "cache_salt": s}
  {"call": "vllm_metrics", "deployment": d, "replica": id}   exposition text
  {"call": "nixl_state", "deployment": d, "replica": id}
Errors come back as {"error": "..."}.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

# The node's environment runs Serve's routers on the caller's event loop (Ray's fast path for
# replicas); this driver calls handles synchronously, which needs Ray's router thread.
os.environ["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] = "1"

import ray  # noqa: E402
from ray import serve  # noqa: E402

APP_NAME = "pdserve"
#: what starts the probe's own lines on stdout
REPLY = "PROBE"


def answer(command: dict[str, Any]) -> Any:
    ingress = serve.get_app_handle(APP_NAME)
    call = command["call"]
    if call == "routing":
        return ingress.routing.remote().result(timeout_s=120)
    if call == "stats":
        return ingress.stats.remote().result(timeout_s=120)
    if call == "prefix_hits":
        return ingress.prefix_hits.remote(command["model"], command["role"],
                                          command["token_ids"],
                                          command.get("cache_salt")).result(timeout_s=120)
    if call in ("vllm_metrics", "nixl_state"):
        handle = serve.get_deployment_handle(command["deployment"], APP_NAME)
        return getattr(handle, call).remote(replica=command["replica"]).result(timeout_s=120)
    raise ValueError(f"unknown call {call!r}")


def main() -> None:
    ray.init(address="auto", namespace="serve", log_to_driver=False)
    print(REPLY, json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            reply = {"result": answer(json.loads(line))}
        except Exception:  # the test shows it
            reply = {"error": traceback.format_exc(limit=3)}
        print(REPLY, json.dumps(reply, default=str), flush=True)


if __name__ == "__main__":
    main()
