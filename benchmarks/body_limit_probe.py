"""An oversized request body against a running server: how fast the 413 comes, with and
without `Content-Length`, and how much the resident memory of Ray's proxy and of the ingress
replicas grew (the body ceiling in Ray's proxy, `deployments/api/proxy_body_limit.py`).

    make serve   # in another shell
    python -m pdserve.benchmarks.body_limit_probe --rounds 3
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import httpx
import psutil

MIB = 2**20


def resident(marker: str) -> int:
    """Resident bytes of the processes whose command line holds `marker`."""
    return sum(p.memory_info().rss for p in psutil.process_iter(["cmdline"])
               if marker in " ".join(p.info["cmdline"] or []))


def chunks(size: int) -> Iterator[bytes]:
    for _ in range(size // 2**16):
        yield b"x" * 2**16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--app", default="pdserve", help="the Serve app (its ingress replicas)")
    parser.add_argument("--mib", type=int, default=48, help="body size")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.mib * MIB
    markers = {"proxy": "ProxyActor", "ingress": f"ServeReplica:{args.app}:ingress"}
    print("round  body     status  seconds  proxy MiB  ingress MiB")
    with httpx.Client(base_url=args.url, timeout=120) as http:
        for i in range(args.rounds):
            for kind in ("sized", "chunked"):
                before = {k: resident(m) for k, m in markers.items()}
                start = time.monotonic()
                content = b"x" * size if kind == "sized" else chunks(size)
                r = http.post("/v1/chat/completions", content=content,
                              headers={"content-type": "application/json"})
                took = time.monotonic() - start
                grew = {k: (resident(m) - before[k]) / MIB for k, m in markers.items()}
                print(f"{i:5d}  {kind:7s}  {r.status_code:6d}  {took:7.3f}  "
                      f"{grew['proxy']:9.1f}  {grew['ingress']:11.1f}")


if __name__ == "__main__":
    main()
