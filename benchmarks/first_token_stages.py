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
from pdserve.benchmarks.otlp_sink import OTLPReceiver, SpanRecord
from pdserve.benchmarks.overhead_bench import ENGINE, MODEL_ID, pdserve_config, traced_env
from pdserve.benchmarks.systems import System
from pdserve.tracing import FIRST_OUTPUT_EVENT

SYSTEM_NAMES = ("vllm", "pdserve")
#: vLLM's span of a request, and its first-token latency from arrival (seconds)
LLM_SPAN, TTFT_ATTRIBUTE = "llm_request", "gen_ai.latency.time_to_first_token"
#: vLLM's scheduled → first token (seconds): the engine's own prefill, the same in both
PREFILL_ATTRIBUTE = "gen_ai.latency.time_in_model_prefill"
HTTP_SPAN = "POST /v1/completions"
#: The points a request passes, in order (`points` finds them in its trace)
VLLM_POINTS = ("sent", "arrival", "first token", "received")
PDSERVE_POINTS = ("sent", "ingress", "arrival", "prepared", "engine call", "engine replica",
                  "first token", "engine output", "ingress output", "received")
#: The spans a request's points come from, per system (by its points)
TRACE_SPANS = {VLLM_POINTS: {LLM_SPAN},
               PDSERVE_POINTS: {LLM_SPAN, HTTP_SPAN, "pdserve.prepare", "pdserve.generate_call",
                                "pdserve.colocated.engine"}}
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


@dataclass
class Round:
    system: str
    round: int
    requests: int
    traced: int
    stages: dict[str, float]  # the round's median ms per stretch
    engine_prefill_ms: float | None


def traceparent() -> tuple[str, str]:
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


def prompts(count: int, tokens: int, seed: int) -> list[list[int]]:
    """Distinct token-id prompts (no prefix-cache hits between them) within `bench`'s vocabulary."""
    return [[(seed * 7919 + i * 131 + k * 17) % 500 + 3 for k in range(tokens)]
            for i in range(count)]


def measure(system: System, sink: OTLPReceiver, order: tuple[str, ...], n: int,
            prompt_tokens: int, output_tokens: int, seed: int) -> tuple[list[dict[str, float]],
                                                                       list[float]]:
    """Per request its stretches (ms), and vLLM's engine prefill (ms) of each."""
    with httpx.Client(timeout=120) as client:
        for prompt in prompts(10, prompt_tokens, seed + 1000):  # warm-up
            send(client, system, prompt, output_tokens)
        sent = [send(client, system, p, output_tokens) for p in prompts(n, prompt_tokens, seed)]
    rows, prefill = [], []
    awaited = TRACE_SPANS[order]
    for trace_id, started, received in sent:
        # each process exports its spans in batches of its own: wait for all of them
        spans = sink.wait_for(trace_id, awaited, timeout_s=30)
        found = points(spans, started, received)
        if found is None or not set(order) <= set(found):
            continue  # counted as untraced: a stretch missing a point would span two stages
        rows.append(stretches(found, order))
        llm = next(s for s in spans if s.name == LLM_SPAN)
        if PREFILL_ATTRIBUTE in llm.attributes:
            prefill.append(llm.attributes[PREFILL_ATTRIBUTE] * 1e3)
    return rows, prefill


def build(name: str, model_dir: str, out: Path, endpoint: str) -> tuple[System, tuple[str, ...]]:
    engine = {**ENGINE, "otlp_traces_endpoint": endpoint}
    if name == "vllm":
        system = systems.vllm_system(model_dir, MODEL_ID, engine)
        otlp = {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}  # the receiver's
        return replace(system, env={**system.env, **otlp}), VLLM_POINTS
    if name == "pdserve":
        return systems.serve_run_system(
            name, pdserve_config("pdserve://bench", engine), out / "configs" / "pdserve.yaml",
            model_dir, MODEL_ID, engine, traced_env(endpoint)), PDSERVE_POINTS
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
        table[system] = {k: (statistics.median(v), min(v), max(v))
                         for k, v in values.items() if v}
    return table


def markdown(meta: dict[str, Any], rounds: list[Round]) -> str:
    table = summary(rounds)
    cell = lambda v: f"{v[0]:.2f} ({v[1]:.2f}–{v[2]:.2f})"  # noqa: E731
    lines = [f"# First-token stages: {meta['run_name']}", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {report.machine_line(meta['machine'])}",
             f"- commit: {meta['git_revision']}",
             f"- {meta['requests']} requests per system and round ({meta['prompt_tokens']}-token "
             f"prompts, {meta['output_tokens']} out, streamed, one at a time), {meta['rounds']} "
             "rounds; ms, median over rounds of each round's median (min–max)",
             f"- nice values: {json.dumps(meta.get('priorities', {}))}", "",
             "## The stretches both systems have", "",
             "| stretch | " + " | ".join(table) + " | difference |",
             "|---|" + "---|" * (len(table) + 1)]
    names = [f"{a} → {b}" for a, b in COMMON_STRETCHES] + [
        "engine prefill (vLLM: scheduled → first token)"]
    for name in names:
        values = [table[s].get(name) for s in table]
        diff = (f"{values[-1][0] - values[0][0]:+.2f}" if len(values) > 1 and all(values)
                else "")
        lines.append(f"| {name} | " + " | ".join(cell(v) if v else "–" for v in values)
                     + f" | {diff} |")
    for system, rows in table.items():
        own = {k: v for k, v in rows.items() if k not in names}
        if own:
            lines += ["", f"## {system}, stage by stage", "", "| stage | ms |", "|---|---|"]
            lines += [f"| {k} | {cell(v)} |" for k, v in own.items()]
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
            for name, (system, order) in built.items():
                with systems.running(system, out / "logs" / f"{name}-{n}.log", preload,
                                     args.ready_timeout) as started:
                    meta["priorities"].setdefault(name, systems.priorities(started.pid))
                    rows, prefill = measure(system, sink, order, args.requests,
                                            args.prompt_tokens, args.output_tokens, seed=n)
                keys = list(dict.fromkeys(k for r in rows for k in r))
                done.append(Round(name, n, args.requests, len(rows), {
                    k: statistics.median(r[k] for r in rows if k in r) for k in keys},
                    statistics.median(prefill) if prefill else None))
                print(f"round {n} {name}: {len(rows)}/{args.requests} traced, sent → received "
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
