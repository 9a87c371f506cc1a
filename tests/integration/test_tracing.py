"""One trace per request across the graph's processes, as a collector receives it.

The session app runs with Ray Serve's `tracing_config` (sampling ratio 1, pdserve's OTLP
exporter) and the PD model's engines with vLLM's own `otlp_traces_endpoint`; every process
posts its spans to an OTLP/HTTP receiver in this test process (`benchmarks/otlp_sink.py`). A request
with a client `traceparent` must come back with that trace's id in `x-trace-id` and yield one
trace whose spans link ingress → generate → prefill call → prefill engine, and → decode call →
decode engine → KV transfer (bytes > 0) → vLLM's `llm_request`, each child of the right parent
across processes; local-prefill, fallback and pipeline requests show their own paths; an
unsampled `traceparent` yields no span under it. (Sampling ratio 0 and tracing off:
`tests/unit/test_tracing_setup.py`, in processes of their own.)
"""

from __future__ import annotations

import random
import secrets
import time
from typing import Any

import httpx
from conftest import metric_sum
from shapes import PD_MODEL, PIPELINE_LANCEDB

from pdserve.benchmarks.otlp_sink import OTLPReceiver, SpanRecord, whole
from pdserve.tiny_model import recall_prompt_text
from pdserve.tracing import FIRST_OUTPUT_EVENT

GENERATE = f"pdserve.generate {PD_MODEL}"
HTTP_SPAN = "POST /v1/completions"


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """A client's W3C header: (header, trace id, span id)."""
    trace, span = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace}-{span}-{'01' if sampled else '00'}", trace, span


def complete(client: httpx.Client, prompt: str, header: str, **body: Any) -> httpx.Response:
    response = client.post("/v1/completions", headers={"traceparent": header}, json={
        "model": PD_MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response


def pulled_since(before: float, timeout_s: float = 20.0) -> float:
    """NIXL bytes the decode engine pulled since `before` (its stats land within a step or
    two of the transfer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        moved = metric_sum(f"{PD_MODEL}-decode", "vllm:nixl_bytes_transferred_sum") - before
        if moved > 0 or time.monotonic() > deadline:
            return moved
        time.sleep(0.5)


def one(spans: list[SpanRecord], name: str) -> SpanRecord:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, sorted(s.name for s in spans))
    return found[0]


def ancestors(span: SpanRecord, spans: list[SpanRecord]) -> list[str]:
    """Names of `span`'s ancestors in the trace, nearest first (through Ray's own spans)."""
    by_id = {s.span_id: s for s in spans}
    names, parent = [], by_id.get(span.parent_id)
    while parent is not None:
        names.append(parent.name)
        parent = by_id.get(parent.parent_id)
    return names


def test_a_pd_request_is_one_trace_from_the_clients_span_to_the_kv_pull(
        client: httpx.Client, otlp: OTLPReceiver) -> None:
    header, trace_id, client_span = traceparent()
    prompt = f"{secrets.token_hex(4)} " + recall_prompt_text(random.Random(7), 60, 8)
    moved_before = metric_sum(f"{PD_MODEL}-decode", "vllm:nixl_bytes_transferred_sum")
    response = complete(client, prompt, header)
    moved = pulled_since(moved_before)
    assert response.headers["x-trace-id"] == trace_id
    names = {HTTP_SPAN, GENERATE, "pdserve.prepare", "pdserve.prefill", "pdserve.prefill.engine",
             "pdserve.decode", "pdserve.decode.engine", "pdserve.kv_transfer", "llm_request",
             f"pdserve.route {PD_MODEL}-prefill", f"pdserve.route {PD_MODEL}-decode"}
    spans = otlp.wait_for(trace_id, names, root=client_span)
    assert names <= {s.name for s in spans}, sorted(s.name for s in spans)
    # the client's span is the trace's parent (Ray's proxy continued it), and every span's
    # parent is in the trace: one tree, across every process
    assert whole(spans, client_span), sorted((s.name, s.parent_id) for s in spans)
    http, generate = one(spans, HTTP_SPAN), one(spans, GENERATE)
    assert http.attributes["http.response.status_code"] == 200
    assert HTTP_SPAN in ancestors(generate, spans)
    assert generate.attributes["gen_ai.usage.output_tokens"] == 4
    prefill_call, prefill = one(spans, "pdserve.prefill"), one(spans, "pdserve.prefill.engine")
    decode_call, decode = one(spans, "pdserve.decode"), one(spans, "pdserve.decode.engine")
    assert ancestors(prefill_call, spans)[0] == GENERATE
    assert ancestors(decode_call, spans)[0] == GENERATE
    assert "pdserve.prefill" in ancestors(prefill, spans)  # across Ray: the prefill replica
    assert "pdserve.decode" in ancestors(decode, spans)  # and the decode replica
    assert prefill_call.attributes["pdserve.prefill.outcome"] == "ok"
    assert decode_call.attributes["pdserve.plan"] == "remote"
    assert prefill.attributes["pdserve.pool"] == f"{PD_MODEL}/prefill"
    # vLLM's own timings of the request on each engine
    assert prefill.attributes["pdserve.engine.to_first_token_s"] > 0
    assert decode.attributes["pdserve.engine.decode_s"] > 0
    assert prefill.attributes["pdserve.engine.queued_s"] >= 0
    assert decode.attributes["pdserve.pool"] == f"{PD_MODEL}/decode"
    # when the first output left the decode engine's replica and reached the ingress
    left, reached = (decode.event_ns(FIRST_OUTPUT_EVENT), decode_call.event_ns(FIRST_OUTPUT_EVENT))
    assert left is not None and reached is not None, (decode.events, decode_call.events)
    assert decode.start_ns < left <= reached < decode_call.end_ns
    pull = one(spans, "pdserve.kv_transfer")
    assert pull.parent_id == decode.span_id
    assert pull.attributes["pdserve.kv_transfer.outcome"] == "ok"
    assert pull.attributes["pdserve.kv_transfer.blocks"] >= 1
    assert pull.attributes["pdserve.kv_transfer.bytes"] > 0
    # what NIXL moved for this request (vLLM's count) is at most what the prefill offered
    assert 0 < moved <= pull.attributes["pdserve.kv_transfer.bytes"], moved
    assert pull.attributes["pdserve.kv_transfer.blocks"] == prefill.attributes[
        "pdserve.kv_transfer.blocks"]
    # the ingress's work before the first engine call (parse, template, tokenize)
    assert one(spans, "pdserve.prepare").parent_id == http.span_id
    # vLLM's own request spans (one per engine) joined the trace under the engines' spans
    llm = [s for s in spans if s.name == "llm_request"]
    assert {s.parent_id for s in llm} == {prefill.span_id, decode.span_id}, llm
    # each pool call's routing decision, under Ray's routing span of that call
    routes = {s.name: s for s in spans if s.name.startswith("pdserve.route ")}
    assert set(routes) == {f"pdserve.route {PD_MODEL}-prefill", f"pdserve.route {PD_MODEL}-decode"}
    assert routes[f"pdserve.route {PD_MODEL}-decode"].attributes["pdserve.route.replica"] == (
        decode.attributes["pdserve.replica"])
    assert "pdserve.decode" in ancestors(routes[f"pdserve.route {PD_MODEL}-decode"], spans)


def test_a_streamed_request_marks_its_first_output_leaving_the_engine_and_reaching_the_ingress(
        client: httpx.Client, otlp: OTLPReceiver) -> None:
    header, trace_id, _ = traceparent()
    prompt = f"{secrets.token_hex(4)} " + recall_prompt_text(random.Random(11), 60, 8)
    response = complete(client, prompt, header, stream=True, max_tokens=8, ignore_eos=True)
    assert response.text.rstrip().endswith("data: [DONE]"), response.text[-200:]
    spans = otlp.wait_for(trace_id, {"pdserve.decode", "pdserve.decode.engine"})
    engine, call = one(spans, "pdserve.decode.engine"), one(spans, "pdserve.decode")
    assert engine.attributes["pdserve.generated_tokens"] == 8
    left, reached = engine.event_ns(FIRST_OUTPUT_EVENT), call.event_ns(FIRST_OUTPUT_EVENT)
    assert left is not None and reached is not None, (engine.events, call.events)
    # once each, the first of 8 streamed outputs: before the stream (and the engine span) ended
    assert [n for n, _ in engine.events].count(FIRST_OUTPUT_EVENT) == 1
    assert engine.start_ns < left <= reached < call.end_ns and left < engine.end_ns


def test_local_prefill_and_fallback_requests_show_their_paths(
        client: httpx.Client, otlp: OTLPReceiver) -> None:
    header, trace_id, _ = traceparent()
    complete(client, "the cat", header)  # below the remote-prefill threshold
    spans = otlp.wait_for(trace_id, {GENERATE, "pdserve.decode.engine"})
    names = {s.name for s in spans}
    assert one(spans, "pdserve.decode").attributes["pdserve.plan"] == "local"
    assert not names & {"pdserve.prefill", "pdserve.prefill.engine", "pdserve.kv_transfer"}

    header, trace_id, _ = traceparent()
    complete(client, f"{secrets.token_hex(4)} " + "a long prompt that prefills remotely " * 4,
             header, vllm_xargs={"pdserve_fail_prefill": 1})
    spans = otlp.wait_for(trace_id, {GENERATE, "pdserve.prefill", "pdserve.decode.engine"})
    prefill_call = one(spans, "pdserve.prefill")
    assert prefill_call.attributes["pdserve.prefill.outcome"] == "error"
    assert prefill_call.status == 2  # the call failed; the request did not
    assert one(spans, GENERATE).attributes["pdserve.outcome"] == "ok"
    assert one(spans, "pdserve.decode.engine").attributes["pdserve.kv_transfer.pull"] is False


def test_a_pipeline_request_shows_retrieval_then_generation(
        client: httpx.Client, otlp: OTLPReceiver) -> None:
    header, trace_id, client_span = traceparent()
    response = client.post("/v1/chat/completions", headers={"traceparent": header}, json={
        "model": PIPELINE_LANCEDB, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "How does the decode pool get its KV?"}]})
    assert response.status_code == 200, response.text
    names = {"pdserve.retrieve", "pdserve.embed", "pdserve.search", GENERATE}
    spans = otlp.wait_for(trace_id, names, root=client_span)
    assert names <= {s.name for s in spans}, sorted(s.name for s in spans)
    assert whole(spans, client_span), sorted((s.name, s.parent_id) for s in spans)
    retrieve = one(spans, "pdserve.retrieve")
    assert "pdserve.retrieve" in ancestors(one(spans, "pdserve.embed"), spans)
    assert "pdserve.retrieve" in ancestors(one(spans, "pdserve.search"), spans)
    assert one(spans, GENERATE).start_ns >= retrieve.end_ns  # generation after retrieval


def test_an_unsampled_traceparent_records_nothing_under_it(
        client: httpx.Client, otlp: OTLPReceiver) -> None:
    header, trace_id, _ = traceparent(sampled=False)
    response = complete(client, "the cat sat", header)
    # Ray's proxy honours the client's decision but does not pass it on: the ingress replica
    # starts a trace of its own, sampled at the configured ratio (1 here)
    assert response.headers.get("x-trace-id") not in (None, trace_id)
    otlp.wait_for(response.headers["x-trace-id"], {HTTP_SPAN, GENERATE, "pdserve.decode.engine"})
    assert otlp.trace(trace_id) == []
