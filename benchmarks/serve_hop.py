"""What one call between two Ray Serve deployments costs on the box at hand, back to back and
after the box idled: the floor under pdserve's ingress → engine hop (`first_token_stages`'
"engine call → engine replica" and "engine output → ingress output").

    python -m pdserve.benchmarks.serve_hop --rounds 3 --out benchmarks/results/serve-hop-cpu-v1
    python -m pdserve.benchmarks.serve_hop --beside-pdserve ...  # again beside a pdserve app

Starts Ray in this process as `make serve` does (`ray_start_env`, workers at nice 0) and deploys
a caller and a callee that do nothing else, with the fast paths pdserve's deployments run with.
The caller times `--calls` calls of each kind (the first `WARM_UP` not counted):

- `ray-actor`: a plain Ray actor call (no Serve): the floor under Serve's;
- `serve-unary`: a Serve handle call;
- `serve-stream`: a streaming Serve handle call of two items, as pdserve calls an engine.

`reach` is the callee's clock at its method's start minus the caller's before the call (both
CLOCK_MONOTONIC, one host), `back` the first item's way back (first item − reach, per call),
`first` when the first item was back, `end` the call's end. Each kind runs back to back and
with `--idle-ms` of idle between calls: a request at concurrency 1 finds the box idle, and
code that runs after an idle stretch can run slower until its caches are warm again. The
harness measures that on the bare host too (before Ray starts): a pipe round trip between two
processes and a fixed piece of Python work, back to back and after the same idle. `--beside-pdserve`
repeats the calls with pdserve's colocated `bench` app (`overhead_bench.pdserve_config`)
running in the same cluster. The report gives the median over rounds of each round's median
(min–max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from pdserve.benchmarks import report, systems
from pdserve.benchmarks.overhead_bench import RAY_START_ENV, pdserve_config
from pdserve.deployments.config.ray_serve_env import RAY_SERVE_FAST_PATH_ENV

KINDS = ("ray-actor", "serve-unary", "serve-stream")
#: Calls of each kind and setting not counted (the first of a round warm its code up)
WARM_UP = 10
#: What each deployment and the actor run with: what pdserve's deployments do
ACTOR_OPTIONS: dict[str, Any] = {
    "num_cpus": 0, "runtime_env": {"env_vars": dict(RAY_SERVE_FAST_PATH_ENV)}}


@ray.remote(num_cpus=0)
class ActorCallee:
    async def reach(self, _: Any) -> float:
        return time.monotonic()


@serve.deployment(ray_actor_options=ACTOR_OPTIONS)
class Callee:
    async def __call__(self, _: Any) -> float:
        return time.monotonic()

    async def stream(self, _: Any) -> AsyncIterator[float]:
        yield time.monotonic()
        yield time.monotonic()


@dataclass(frozen=True)
class Call:
    """One timed call, ms from the caller's start: when the callee's method began, when the
    first item came back, when the call ended."""

    reach: float
    first: float
    end: float


@serve.deployment(ray_actor_options=ACTOR_OPTIONS)
class Caller:
    def __init__(self, callee: DeploymentHandle) -> None:
        self.callee = callee
        self.streams = callee.options(stream=True, method_name="stream")
        self.actor = ActorCallee.options(runtime_env=ACTOR_OPTIONS["runtime_env"]).remote()

    async def one(self, kind: str) -> Call:
        start = time.monotonic()
        if kind == "ray-actor":
            reached = await self.actor.reach.remote(None)
            first = time.monotonic()
        elif kind == "serve-unary":
            reached = await self.callee.remote(None)
            first = time.monotonic()
        elif kind == "serve-stream":
            items = self.streams.remote(None)
            reached = await items.__anext__()
            first = time.monotonic()
            async for _ in items:
                pass
        else:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        end = time.monotonic()
        return Call((reached - start) * 1e3, (first - start) * 1e3, (end - start) * 1e3)

    async def time_calls(self, kind: str, calls: int, idle_s: float) -> list[Call]:
        timed = []
        for _ in range(calls):
            timed.append(await self.one(kind))
            await asyncio.sleep(idle_s)
        return timed[WARM_UP:]


def medians(calls: list[Call]) -> dict[str, float]:
    """The median of each measure over the calls; `back` (first item − reach) per call."""
    return {"reach": statistics.median(c.reach for c in calls),
            "back": statistics.median(c.first - c.reach for c in calls),
            "first": statistics.median(c.first for c in calls),
            "end": statistics.median(c.end for c in calls)}


def host_timings(work: Callable[[], Any], calls: int, idle_s: float) -> float:
    """Median µs of `work()` over `calls` runs, `idle_s` of sleep between them."""
    timed = []
    for _ in range(calls):
        start = time.perf_counter()
        work()
        timed.append((time.perf_counter() - start) * 1e6)
        time.sleep(idle_s)
    return statistics.median(timed[WARM_UP:])


def python_work() -> int:
    """A fixed piece of interpreter work (~0.2 ms here): loops, a dict, JSON."""
    doc = {"tokens": list(range(64)), "model": "bench"}
    return sum(len(json.dumps(doc)) if i % 100 == 0 else i for i in range(2000))


def host_row(calls: int, idle_s: float) -> dict[str, float]:
    """A pipe round trip between this process and a child, and `python_work`, after `idle_s`."""
    child_in, to_child = os.pipe()  # (read end, write end)
    from_child, child_out = os.pipe()
    try:
        child = os.fork()
    except OSError:
        for fd in (child_in, to_child, from_child, child_out):
            os.close(fd)
        raise
    if child == 0:  # echo one byte at a time until the parent closes its end; never return
        try:
            os.close(to_child)
            os.close(from_child)
            while os.read(child_in, 1):
                os.write(child_out, b"x")
        finally:
            os._exit(0)
    os.close(child_in)
    os.close(child_out)

    def round_trip() -> None:
        os.write(to_child, b"x")
        if not os.read(from_child, 1):
            raise RuntimeError("the echo child is gone")

    try:
        return {"pipe round trip": host_timings(round_trip, calls, idle_s),
                "python work": host_timings(python_work, calls, idle_s)}
    finally:
        os.close(to_child)
        os.waitpid(child, 0)
        os.close(from_child)


@dataclass
class Row:
    """One round's medians of one setting: ms for calls, µs for the host's measures."""

    phase: str  # "bare", "beside pdserve", "host"
    kind: str
    idle_ms: float
    round: int
    values: dict[str, float]


def summary(rows: list[Row]) -> dict[tuple[str, str, float], dict[str, tuple[float, float, float]]]:
    """Per (phase, kind, idle): each measure's median over rounds, min, max."""
    table: dict[tuple[str, str, float], dict[str, tuple[float, float, float]]] = {}
    for key in dict.fromkeys((r.phase, r.kind, r.idle_ms) for r in rows):
        mine = [r.values for r in rows if (r.phase, r.kind, r.idle_ms) == key]
        names = dict.fromkeys(k for v in mine for k in v)
        table[key] = {n: report.spread(vs) for n in names
                      if (vs := [v[n] for v in mine if n in v])}
    return table


def cell(value: tuple[float, float, float] | None, digits: int = 2) -> str:
    return "—" if value is None else report.median_range(value, digits)


def markdown(meta: dict[str, Any], rows: list[Row]) -> str:
    table = summary(rows)
    lines = [f"# Serve hop: {meta['run_name']}", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {report.machine_line(meta['machine'])}",
             f"- commit: {meta['git_revision']}",
             f"- {meta['calls']} calls per kind, setting and round ({WARM_UP} of them not "
             f"counted), {meta['rounds']} rounds; median over rounds of each round's median "
             "(min–max)",
             f"- nice values: {json.dumps(meta.get('priorities', {}))}", ""]
    for phase in dict.fromkeys(k[0] for k in table if k[0] != "host"):
        lines += [f"## Calls, {phase} (ms)", "",
                  "| kind | idle between calls | reach | back | first | end |",
                  "|---|---|---|---|---|---|"]
        for (p, kind, idle), values in table.items():
            if p == phase:
                lines.append(f"| {kind} | {idle:g} ms | " + " | ".join(
                    cell(values.get(name)) for name in ("reach", "back", "first", "end")) + " |")
        lines.append("")
    host = {k: v for k, v in table.items() if k[0] == "host"}
    if host:
        lines += ["## The host alone (µs)", "", "| measure | idle before each | median |",
                  "|---|---|---|"]
        for (_, _, idle), values in host.items():
            for name, value in values.items():
                lines.append(f"| {name} | {idle:g} ms | {cell(value, 1)} |")
    return "\n".join(lines) + "\n"


def start_ray() -> None:
    """Ray in this process, as `make serve` starts it: Ray Serve's fast paths and HAProxy mode
    (`ray_start_env`), every worker at nice 0, vLLM's preloaded libraries."""
    os.environ.update({**RAY_START_ENV, "RAY_worker_niceness": "0"})
    preload = systems.find_preload_libs()
    if preload:
        os.environ["LD_PRELOAD"] = ":".join(preload)
    ray.init(address="local", include_dashboard=False)  # never a cluster RAY_ADDRESS names
    serve.start(http_options={"host": "127.0.0.1", "port": 8000}, proxy_location="HeadOnly")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pdserve.benchmarks.serve_hop",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=160)
    p.add_argument("--idle-ms", type=float, default=20.0)
    p.add_argument("--beside-pdserve", action="store_true")
    p.add_argument("--out", type=Path,
                   default=Path("benchmarks/results") / f"serve-hop-{datetime.now():%Y%m%d-%H%M}")
    args = p.parse_args(argv)
    if args.calls <= WARM_UP:
        p.error(f"--calls must be over {WARM_UP}")
    if args.rounds < 1 or args.idle_ms <= 0:
        p.error("--rounds must be at least 1 and --idle-ms over 0")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "pdserve.benchmarks.serve_hop",
                          *(argv if argv is not None else sys.argv[1:])])
    meta: dict[str, Any] = {**report.run_metadata(command, systems.REPO_ROOT),
                            "run_name": out.name, "rounds": args.rounds, "calls": args.calls}
    idles = (0.0, args.idle_ms)
    rows: list[Row] = []

    def save() -> None:
        (out / "results.json").write_text(json.dumps(
            {"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
        (out / "report.md").write_text(markdown(meta, rows))

    for n in range(1, args.rounds + 1):
        for idle in idles:
            rows.append(Row("host", "host", idle, n, host_row(args.calls, idle / 1e3)))
    try:
        start_ray()
        caller = serve.run(Caller.bind(Callee.bind()), name="serve-hop", route_prefix=None)
        phases = ["bare"] + (["beside pdserve"] if args.beside_pdserve else [])
        for phase in phases:
            if phase == "beside pdserve":
                from pdserve.deployments.app import build_app
                config = pdserve_config("pdserve://bench")["applications"][0]["args"]
                serve.run(build_app(config), name="pdserve", route_prefix="/")
            meta.setdefault("priorities", {})[phase] = systems.priorities(os.getpid())
            for n in range(1, args.rounds + 1):
                for kind in KINDS:
                    for idle in idles:
                        calls = caller.time_calls.remote(kind, args.calls, idle / 1e3).result()
                        rows.append(Row(phase, kind, idle, n, medians(calls)))
                        print(f"{phase} round {n} {kind} idle {idle:g} ms: {rows[-1].values}",
                              flush=True)
                save()
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    save()
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
