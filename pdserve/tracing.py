"""pdserve's OpenTelemetry spans, on the one TracerProvider Ray Serve sets up per process.

Ray Serve's tracing turns it on (`RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH` and
`RAY_SERVE_TRACING_SAMPLING_RATIO` where Ray starts: `ray_serve_env.tracing_env`; a serve
config's `tracing_config` reaches replicas but not Ray 2.60's HTTP proxy): in every proxy and
replica it installs a TracerProvider with a parent-based ratio sampler and the span
processors the exporter function returns, continues a client's W3C `traceparent`, and
carries the context through the proxy, each replica and each handle call. pdserve's spans
use that provider, so they join Ray's in one trace per request; with tracing off they are
OpenTelemetry's no-op spans (nothing recorded, nothing exported, no exporter created).

`otlp_span_processors` is the exporter function Ray loads (`RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH`,
or a `tracing_config`'s `exporter_import_path`); it sends spans over OTLP
as the standard `OTEL_EXPORTER_OTLP_*` variables say (endpoint, protocol, headers). Span
attribute names follow OpenTelemetry's GenAI conventions where one applies (`gen_ai.*`), and
are `pdserve.*` otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["Span", "SpanKind", "active", "carrier", "context_of", "current", "finish",
           "otlp_span_processors", "start", "trace_id", "tracer"]

TRACER_NAME = "pdserve"
#: the event marking, on a span that streams a request's outputs, when its first one came
FIRST_OUTPUT_EVENT = "pdserve.first_output"
#: the OTLP protocols the official exporters speak (OpenTelemetry's variable names)
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_PROPAGATOR = TraceContextTextMapPropagator()


#: OpenTelemetry's proxy tracer: it follows the provider Ray installs, whenever it does
_TRACER = trace.get_tracer(TRACER_NAME)


def tracer() -> trace.Tracer:
    """pdserve's tracer on the process's provider (Ray's when tracing is on; else a no-op)."""
    return _TRACER


def otlp_span_processors() -> list[SpanProcessor]:
    """Ray Serve's `tracing_config.exporter_import_path` for OTLP: one batching processor over
    the official OTLP exporter of the configured protocol (`grpc`, the default, or
    `http/protobuf`); endpoint, headers and batching come from the standard variables."""
    protocol = next((os.environ[v] for v in PROTOCOL_VARIABLES if os.environ.get(v)), "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    else:
        raise ValueError(f"OTLP protocol {protocol!r} is not one of grpc, http/protobuf "
                         f"({' / '.join(PROTOCOL_VARIABLES)})")
    return [BatchSpanProcessor(OTLPSpanExporter())]


def carrier(span: Span | None = None) -> dict[str, str]:
    """W3C trace headers of `span` (default: the current one), to hand the trace to code that
    takes headers (vLLM's `trace_headers`); empty when nothing is being recorded."""
    ctx = trace.set_span_in_context(span) if span is not None else otel_context.get_current()
    headers: dict[str, str] = {}
    _PROPAGATOR.inject(headers, context=ctx)
    return headers


def context_of(headers: Mapping[str, str] | None) -> otel_context.Context | None:
    """The context W3C trace headers carry (None without them)."""
    if not headers:
        return None
    return _PROPAGATOR.extract(carrier=dict(headers))


def trace_id(span: Span | None = None) -> str | None:
    """The 32-hex-digit trace id of `span` (default: the current one) if it is sampled."""
    span_context = (span or trace.get_current_span()).get_span_context()
    if not span_context.is_valid or not span_context.trace_flags.sampled:
        return None
    return format(span_context.trace_id, "032x")


def start(name: str, parent: Span | None = None, kind: SpanKind = SpanKind.INTERNAL,
          **attributes: Any) -> Span:
    """A span under `parent` (default: the current span), not made current: pdserve's spans
    live across `yield`s of async generators that other tasks drive (vLLM merges a request's
    outputs in tasks of its own), where a context attached in one task cannot be detached in
    another. Attributes that are None are left out."""
    context = trace.set_span_in_context(parent) if parent is not None else None
    return tracer().start_span(name, context=context, kind=kind,
                               attributes={k: v for k, v in attributes.items() if v is not None})


def prepared() -> None:
    """A `pdserve.prepare` span under the current one, from its start to now: called where a
    request reaches its first engine call, it covers what came before in the ingress (body
    parsing, chat template, tokenization in vLLM's OpenAI layer; the edge checks)."""
    parent = trace.get_current_span()
    started = getattr(parent, "start_time", None)  # an SDK span's start (ns); None if no-op
    if started is not None and parent.is_recording():
        tracer().start_span("pdserve.prepare", start_time=started).end()


def finish(span: Span, error: BaseException | None = None, **attributes: Any) -> None:
    """End `span` with its last attributes, marked failed when `error` ended it."""
    if span.is_recording():
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


@contextmanager
def current(span: Span) -> Iterator[None]:
    """`span` as the current span for a stretch of code that one task runs: a Serve handle's
    `.remote()` (it hands the current context to the replica it calls), or a coroutine's
    `await` (not an async generator's `yield`: the next step may run in another task)."""
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def active(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Iterator[Span]:
    """A span under the current one, current itself while a coroutine's block runs (same task
    rule as `current`), ended when the block ends (failed if it raised)."""
    span = start(name, kind=kind, **attributes)
    error: BaseException | None = None
    try:
        with current(span):
            yield span
    except Exception as exc:
        error = exc
        raise
    finally:
        finish(span, error)
