"""An OTLP/HTTP trace receiver in this process, standing in for a collector (the official
exporters post protobuf `ExportTraceServiceRequest`s to `/v1/traces`): the tests keep every
span as a flat record to query; the overhead benchmark's traced system sends its spans here
too, counted only (`keep=False`), so tracing costs what it costs the graph, not a backend."""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

#: What an OpenTelemetry exporter's environment needs to send to this receiver (OTLP/HTTP,
#: protobuf; the official exporters default to gRPC)
EXPORTER_ENV = {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}


@dataclass(frozen=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    start_ns: int
    end_ns: int
    status: int  # OpenTelemetry's status code: 0 unset, 1 ok, 2 error
    events: tuple[tuple[str, int], ...] = ()  # (name, time in ns) of each event on the span

    def event_ns(self, name: str) -> int | None:
        """When the span's first event of that name happened (ns), if it has one."""
        return next((t for n, t in self.events if n == name), None)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in items}


def whole(spans: list[SpanRecord], root: str) -> bool:
    """Whether every span in `spans` reaches `root` through its parents: some hang from it
    and no span's parent is missing."""
    ids = {s.span_id for s in spans} | {root}
    return any(s.parent_id == root for s in spans) and all(s.parent_id in ids for s in spans)


class OTLPReceiver:
    """Collects the spans posted to `endpoint` (http/protobuf) while it runs (`keep=False`:
    counts the export requests and their bytes only)."""

    def __init__(self, keep: bool = True) -> None:
        self.spans: list[SpanRecord] = []
        self.keep = keep
        self.requests = self.bytes = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests += 1
                    receiver.bytes += len(body)
                if receiver.keep:
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    receiver._take(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _take(self, request: ExportTraceServiceRequest) -> None:
        records = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    records.append(SpanRecord(
                        span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                        span.name, _attributes(span.attributes), resource,
                        span.start_time_unix_nano, span.end_time_unix_nano, span.status.code,
                        tuple((e.name, e.time_unix_nano) for e in span.events)))
        with self.lock:
            self.spans.extend(records)

    def trace(self, trace_id: str) -> list[SpanRecord]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, trace_id: str, names: set[str], timeout_s: float = 30.0,
                 root: str | None = None) -> list[SpanRecord]:
        """The trace's spans once every name in `names` arrived (or at the timeout); with
        `root` (the span id the trace hangs from: a client's span, "" for a trace the server
        started), also once the trace is whole: some span hangs from `root` and every other
        span's parent arrived. Each process exports its spans in batches of its own, so a
        parent in one process (Ray's proxy span under the client's, a replica's span above
        an engine's) can arrive after the children a test waits on by name."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.trace(trace_id)
            arrived = names <= {s.name for s in spans} and (root is None or whole(spans, root))
            if arrived or time.monotonic() > deadline:
                return spans
            time.sleep(0.2)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
