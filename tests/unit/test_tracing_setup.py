"""Tracing's switches, each in a fresh process set up the way Ray Serve sets up a replica
(`setup_tracing`, which installs the process's one TracerProvider): off → the exporter is
never created and nothing is recorded; sampling ratio 0 → nothing is recorded; ratio 1 →
pdserve's spans nest under the request's and its `x-trace-id` names the trace. Pins the Ray
internals pdserve relies on (`ray.serve._private.tracing_utils.setup_tracing` and its
exporter contract): an upgrade that changes them fails here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pdserve.deployments.config.ray_serve_env import OTLP_EXPORTER, ray_start_env

PROBE = r'''
import asyncio, json, sys
import httpx
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ray.serve._private.tracing_utils import setup_tracing
from ray.serve.schema import TracingConfig
from fastapi import FastAPI
from starlette.responses import PlainTextResponse

from pdserve import tracing
from pdserve.deployments.api.request_span import RequestSpan

EXPORTER, CALLS = InMemorySpanExporter(), []

def processors():
    CALLS.append(1)
    return [SimpleSpanProcessor(EXPORTER)]

inner = FastAPI()

@inner.get("/probe/{item}")
async def probe(item: str):
    child = tracing.start("pdserve.child")  # under the request's span
    tracing.finish(child)
    return PlainTextResponse("ok")

enabled, ratio = sys.argv[1] == "on", float(sys.argv[2])
set_up = setup_tracing("replica", "probe", tracing_config=TracingConfig(
    enabled=enabled, exporter_import_path="__main__:processors", sampling_ratio=ratio))
app = RequestSpan(inner)

async def call():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        return await client.get("/probe/a1")

response = asyncio.run(call())
spans = EXPORTER.get_finished_spans()
parents = {s.name: (s.parent.span_id if s.parent else None) for s in spans}
ids = {s.name: s.context.span_id for s in spans}
print(json.dumps({
    "set_up": set_up, "exporters": len(CALLS), "spans": sorted(parents),
    "nested": parents.get("pdserve.child") == ids.get("GET /probe/{item}"),
    "trace_id": response.headers.get("x-trace-id"),
    "recorded_trace": format(spans[0].context.trace_id, "032x") if spans else None,
}))
'''


def probe(enabled: bool, ratio: float) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, "on" if enabled else "off", str(ratio)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_tracing_on_nests_pdserve_spans_under_the_request_and_names_the_trace() -> None:
    result = probe(True, 1.0)
    assert result["set_up"] and result["exporters"] == 1, result
    # named by the route's template, not the path (`/probe/a1`): span names stay bounded
    assert result["spans"] == ["GET /probe/{item}", "pdserve.child"] and result["nested"], result
    assert result["trace_id"] == result["recorded_trace"] is not None, result


@pytest.mark.parametrize(("enabled", "ratio", "exporters"), [(True, 0.0, 1), (False, 1.0, 0)])
def test_ratio_zero_records_nothing_and_tracing_off_creates_no_exporter(
        enabled: bool, ratio: float, exporters: int) -> None:
    result = probe(enabled, ratio)
    assert result["set_up"] is enabled and result["exporters"] == exporters, result
    assert result["spans"] == [] and result["trace_id"] is None, result


def test_the_start_environment_turns_tracing_on_only_with_an_otlp_endpoint() -> None:
    assert "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH" not in ray_start_env({})
    env = ray_start_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert env["RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"] == OTLP_EXPORTER


@pytest.mark.parametrize(("protocol", "module"), [
    (None, "grpc"), ("grpc", "grpc"), ("http/protobuf", "http")])
def test_the_exporter_speaks_the_configured_otlp_protocol(
        monkeypatch: pytest.MonkeyPatch, protocol: str | None, module: str) -> None:
    from pdserve import tracing

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    if protocol is None:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    else:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocol)
    (processor,) = tracing.otlp_span_processors()
    try:
        exporter = processor.span_exporter
        assert type(exporter).__module__.startswith(
            f"opentelemetry.exporter.otlp.proto.{module}"), type(exporter)
    finally:
        processor.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="http/json"):
        tracing.otlp_span_processors()


def test_ray_hands_each_routed_call_its_trace_context() -> None:
    """The router's span hangs under Ray's `route_to_replica` span through the request's
    metadata (`routing/router.py` `_trace`), a Ray internal."""
    import dataclasses

    from ray.serve._private.common import RequestMetadata

    assert "tracing_context" in {f.name for f in dataclasses.fields(RequestMetadata)}
