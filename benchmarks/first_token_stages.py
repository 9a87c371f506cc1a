"""Where a short streamed completion's first token spends its time: plain vLLM against pdserve
(colocated, one engine, behind HAProxy: `make serve`'s path), from every request's trace.

    python -m pdserve.benchmarks.first_token_stages --rounds 3 \
        --out benchmarks/results/first-token-stages-cpu-v1

`overhead_bench` measures what the graph costs a client; this says where. Both systems trace
every request to an OTLP receiver in the harness: plain vLLM its `llm_request` span
(`--otlp-traces-endpoint`), pdserve its own spans, Ray Serve's and, under its engine's span, the
same vLLM span. Each request carries the client's `traceparent`, so its spans are one trace in
either system. vLLM's renderer stamps a request's arrival in both (in vLLM's OpenAI layer: the
API server, pdserve's ingress) and its output processor the first token, so three stretches
compare directly (what pdserve adds to each):

- sent → arrival: HTTP into vLLM's OpenAI layer (+ HAProxy's hop to the ingress replica);
- arrival → first token: rendering, the engine (+ pdserve's checks and routing, the Ray call to
  the engine's replica);
- first token → received: the first SSE event out (+ the Ray stream back to the ingress).

pdserve's stretches are split further at its spans' edges (`PDSERVE_POINTS`). Tracing every
request costs both systems something of its own; they are compared at equal tracing. Rounds
interleave the systems; the report gives per stage the median over rounds of each round's
median, with min–max.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from pdserve.benchmarks import report, systems
from pdserve.benchmarks.otlp_sink import EXPORTER_ENV, OTLPReceiver, SpanRecord
from pdserve.benchmarks.overhead_bench import ENGINE, MODEL_ID, pdserve_config, traced_env
from pdserve.benchmarks.systems import System
from pdserve.tracing import FIRST_OUTPUT_EVENT

SYSTEM_NAMES = ("vllm", "pdserve")
#: The report's difference column: the second system's minus the first's
DIFFERENCE = ("vllm", "pdserve")
#: Requests each system gets before the measured ones in a round (after its start)
WARM_UP = 10
#: vLLM's span of a request, and its first-token latency from arrival (seconds)
LLM_SPAN, TTFT_ATTRIBUTE = "llm_request", "gen_ai.latency.time_to_first_token"
#: vLLM's scheduled → first token (seconds): the engine's own prefill, the same in both
PREFILL_ATTRIBUTE = "gen_ai.latency.time_in_model_prefill"
HTTP_SPAN = "POST /v1/completions"
#: The points a request passes, in order (`points` finds them in its trace)
VLLM_POINTS = ("sent", "arrival", "first token", "received")
PDSERVE_POINTS = ("sent", "ingress", "arrival", "prepared", "engine call", "engine replica",
                  "first token", "engine output", "ingress output", "received")
#: The stretches both systems have (pairs of points)
COMMON_STRETCHES = (("sent", "arrival"), ("arrival", "first token"),
                    ("first token", "received"), ("sent", "received"))


def points(spans: list[SpanRecord], sent_ns: int, received_ns: int) -> dict[str, int] | None:
    """When one request passed each point (ns; those its trace shows), or None without vLLM's
    span (the trace did not arrive)."""
    by_name: dict[str, SpanRecord] = {}
    for span in spans:
        by_name.setdefault(span.name, span)
    llm = by_name.get(LLM_SPAN)
    if llm is None or TTFT_ATTRIBUTE not in llm.attributes:
        return None
    found = {"sent": sent_ns, "arrival": llm.start_ns,
             "first token": llm.start_ns + round(llm.attributes[TTFT_ATTRIBUTE] * 1e9),
             "received": received_ns}
    engine = next((s for s in spans if s.span_id == llm.parent_id
                   and s.name.endswith(".engine")), None)  # pdserve's span of vLLM's request
    edges = {"ingress": (HTTP_SPAN, "start"), "prepared": ("pdserve.prepare", "end"),
             "engine call": ("pdserve.generate_call", "start"),
             "ingress output": ("pdserve.generate_call", FIRST_OUTPUT_EVENT)}
    for point, (name, edge) in edges.items():
        span = by_name.get(name)
        if span is not None:
            found[point] = (span.start_ns if edge == "start" else span.end_ns if edge == "end"
                            else span.event_ns(edge))
    if engine is not None:
        found["engine replica"] = engine.start_ns
        found["engine output"] = engine.event_ns(FIRST_OUTPUT_EVENT)
    return {k: v for k, v in found.items() if v is not None}


def stretches(found: dict[str, int], order: tuple[str, ...]) -> dict[str, float]:
    """ms between consecutive points of `order` the request passed, and the common
    stretches; named "a → b"."""
    passed = [p for p in order if p in found]
    pairs = list(zip(passed, passed[1:], strict=False)) + [
        pair for pair in COMMON_STRETCHES if pair[0] in found and pair[1] in found]
    return {f"{a} → {b}": (found[b] - found[a]) / 1e6 for a, b in dict.fromkeys(pairs)}


@dataclass(frozen=True)
class Shape:
    """What a system's trace holds: the points a request passes, in order, and the spans they
    come from (each process exports its spans in batches of its own: all are awaited)."""

    points: tuple[str, ...]
    spans: frozenset[str]


VLLM_SHAPE = Shape(VLLM_POINTS, frozenset({LLM_SPAN}))
PDSERVE_SHAPE = Shape(PDSERVE_POINTS, frozenset({
    LLM_SPAN, HTTP_SPAN, "pdserve.prepare", "pdserve.generate_call", "pdserve.colocated.engine"}))


@dataclass
class Round:
    """One system's round: how many requests were sent and how many counted (traced whole,
    points in order), and the medians over those."""

    system: str
    round: int
    requests: int
    counted: int
    stages: dict[str, float]  # the round's median ms per stretch
    engine_prefill_ms: float | None


def traceparent() -> tuple[str, str]:
    """A sampled W3C `traceparent` of a new trace, and its trace id."""
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01", trace_id


def send(client: httpx.Client, system: System, prompt: list[int], output_tokens: int
         ) -> tuple[str, int, int]:
    """One streamed completion: its trace id, when it was sent and when its first byte came."""
    header, trace_id = traceparent()
    body = {"model": system.model_name, "prompt": prompt, "max_tokens": output_tokens,
            "stream": True, "ignore_eos": True}
    sent = time.time_ns()
    with client.stream("POST", f"{system.base_url}/v1/completions", json=body,
                       headers={"traceparent": header}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{system.name}: HTTP {response.status_code}")
        received = 0
        for chunk in response.iter_raw():
            if chunk and not received:
                received = time.time_ns()
    return trace_id, sent, received


def prompts(first: int, count: int, tokens: int, seed: int) -> list[list[int]]:
    """Prompts `first` to `first + count - 1` of a seed's sequence, within `bench`'s
    vocabulary. Two prompts of one seed share no first token (131 is prime to 500, so prompt i
    starts like prompt j only if i = j mod 500): none finds another's blocks in the prefix
    cache."""
    if first + count > 500:
        raise ValueError("a seed has 500 distinct prompts")
    return [[(seed * 7919 + i * 131 + k * 17) % 500 + 3 for k in range(tokens)]
            for i in range(first, first + count)]


def in_order(found: dict[str, int], order: tuple[str, ...]) -> bool:
    """Whether the request passed every point of `order`, each no earlier than the one before
    (a point missing would make a stretch span two stages; one out of order, a negative one)."""
    if not set(order) <= set(found):
        return False
    times = [found[p] for p in order]
    return all(a <= b for a, b in zip(times, times[1:], strict=False))


def measure(system: System, sink: OTLPReceiver, shape: Shape, n: int, prompt_tokens: int,
            output_tokens: int, seed: int) -> tuple[list[dict[str, float]], list[float]]:
    """Per counted request its stretches (ms), and vLLM's engine prefill (ms) of each; after
    10 warm-up requests whose prompts none of the measured ones repeats."""
    with httpx.Client(timeout=120) as client:
        for prompt in prompts(n, WARM_UP, prompt_tokens, seed):
            send(client, system, prompt, output_tokens)
        sent = [send(client, system, p, output_tokens)
                for p in prompts(0, n, prompt_tokens, seed)]
    rows, prefill = [], []
    for trace_id, started, received in sent:
        spans = sink.wait_for(trace_id, set(shape.spans), timeout_s=30)
        found = points(spans, started, received)
        if found is None or not in_order(found, shape.points):
            continue  # not counted (`Round.counted` says how many were)
        rows.append(stretches(found, shape.points))
        llm = next(s for s in spans if s.name == LLM_SPAN)
        if PREFILL_ATTRIBUTE in llm.attributes:
            prefill.append(llm.attributes[PREFILL_ATTRIBUTE] * 1e3)
    return rows, prefill


def build(name: str, model_dir: str, out: Path, endpoint: str) -> tuple[System, Shape]:
    """The system, tracing every request to `endpoint` (vLLM's spans too), and its trace's shape."""
    engine = {**ENGINE, "otlp_traces_endpoint": endpoint}
    if name == "vllm":
        system = systems.vllm_system(model_dir, MODEL_ID, engine)
        return replace(system, env={**system.env, **EXPORTER_ENV}), VLLM_SHAPE
    if name == "pdserve":
        return systems.serve_run_system(
            name, pdserve_config("pdserve://bench", engine), out / "configs" / "pdserve.yaml",
            model_dir, MODEL_ID, engine, traced_env(endpoint)), PDSERVE_SHAPE
    raise SystemExit(f"unknown system {name!r}; known: {', '.join(SYSTEM_NAMES)}")


def summary(rounds: list[Round]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per system and stretch: median over rounds of the round medians, min, max."""
    table: dict[str, dict[str, tuple[float, float, float]]] = {}
    for system in dict.fromkeys(r.system for r in rounds):
        mine = [r for r in rounds if r.system == system]
        stages = list(dict.fromkeys(k for r in mine for k in r.stages))
        extra = {"engine prefill (vLLM: scheduled → first token)":
                 [r.engine_prefill_ms for r in mine if r.engine_prefill_ms is not None]}
        values = {k: [r.stages[k] for r in mine if k in r.stages] for k in stages} | extra
        table[system] = {k: report.spread(v) for k, v in values.items() if v}
    return table


def markdown(meta: dict[str, Any], rounds: list[Round]) -> str:
    """The report: the stretches both systems have side by side (with pdserve's minus plain
    vLLM's), then each system's own stages."""
    table = summary(rounds)
    base, other = DIFFERENCE
    counted = ", ".join(f"{s} {sum(r.counted for r in rounds if r.system == s)}/"
                        f"{sum(r.requests for r in rounds if r.system == s)}" for s in table)
    lines = [f"# First-token stages: {meta['run_name']}", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {report.machine_line(meta['machine'])}",
             f"- commit: {meta['git_revision']}",
             f"- {meta['requests']} requests per system and round ({meta['prompt_tokens']}-token "
             f"prompts, {meta['output_tokens']} out, streamed, one at a time), {meta['rounds']} "
             "rounds; ms, median over rounds of each round's median (min–max)",
             f"- requests counted (traced whole, points in order): {counted}",
             f"- nice values: {json.dumps(meta.get('priorities', {}))}", "",
             "## The stretches both systems have", "",
             "| stretch | " + " | ".join(table) + f" | {other} − {base} |",
             "|---|" + "---|" * (len(table) + 1)]
    names = [f"{a} → {b}" for a, b in COMMON_STRETCHES] + [
        "engine prefill (vLLM: scheduled → first token)"]
    for name in names:
        values = [table[s].get(name) for s in table]
        low, high = (table.get(s, {}).get(name) for s in DIFFERENCE)
        diff = f"{high[0] - low[0]:+.2f}" if low and high else ""
        lines.append(f"| {name} | " + " | ".join(
            report.median_range(v) if v else "–" for v in values) + f" | {diff} |")
    for system, rows in table.items():
        own = {k: v for k, v in rows.items() if k not in names}
        if own:
            lines += ["", f"## {system}, stage by stage", "", "| stage | ms |", "|---|---|"]
            lines += [f"| {k} | {report.median_range(v)} |" for k, v in own.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pdserve.benchmarks.first_token_stages",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEM_NAMES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--output-tokens", type=int, default=8)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results")
                   / f"first-token-stages-{datetime.now():%Y%m%d-%H%M}")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model_dir = systems.resolve_model_dir("pdserve://bench")
    preload = systems.find_preload_libs()
    sink = OTLPReceiver(keep=True)
    built = {n: build(n, model_dir, out, sink.endpoint) for n in names}
    command = shlex.join(["python", "-m", "pdserve.benchmarks.first_token_stages",
                          *(argv if argv is not None else sys.argv[1:])])
    meta: dict[str, Any] = {
        **report.run_metadata(command, systems.REPO_ROOT), "run_name": out.name,
        "rounds": args.rounds, "requests": args.requests, "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens, "priorities": {},
        "systems": {n: {"command": shlex.join(s.command), "env": s.env}
                    for n, (s, _) in built.items()}}
    done: list[Round] = []
    try:
        for n in range(1, args.rounds + 1):
            for name, (system, shape) in built.items():
                with systems.running(system, out / "logs" / f"{name}-{n}.log", preload,
                                     args.ready_timeout) as started:
                    meta["priorities"].setdefault(name, systems.priorities(started.pid))
                    rows, prefill = measure(system, sink, shape, args.requests,
                                            args.prompt_tokens, args.output_tokens, seed=n)
                keys = list(dict.fromkeys(k for r in rows for k in r))
                done.append(Round(name, n, args.requests, len(rows), {
                    k: statistics.median(r[k] for r in rows if k in r) for k in keys},
                    statistics.median(prefill) if prefill else None))
                print(f"round {n} {name}: {len(rows)}/{args.requests} counted, sent → received "
                      f"{done[-1].stages.get('sent → received', float('nan')):.2f} ms",
                      flush=True)
                (out / "results.json").write_text(json.dumps(
                    {"meta": meta, "rounds": [r.__dict__ for r in done]}, indent=1))
                (out / "report.md").write_text(markdown(meta, done))
    finally:
        sink.close()
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
