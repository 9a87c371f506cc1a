"""The OTLP receiver's wait for a whole trace: a trace is whole only once some span hangs from
the root and no span's parent is missing (a parent exported later by another process)."""

from __future__ import annotations

import threading
import time

from pdserve.benchmarks.otlp_sink import OTLPReceiver, SpanRecord, whole


def span(span_id: str, parent_id: str, name: str = "s") -> SpanRecord:
    return SpanRecord("t" * 32, span_id, parent_id, name, {}, {}, 0, 1, 0)


def test_a_trace_is_whole_when_every_parent_arrived() -> None:
    proxy, ingress, engine = span("a", "client"), span("b", "a"), span("c", "b")
    assert whole([proxy, ingress, engine], "client")
    assert not whole([ingress, engine], "client")  # the proxy's span has not arrived
    assert not whole([proxy, engine], "client")  # a span in between has not
    assert not whole([], "client")
    assert whole([span("a", "")], "")  # a trace the server started


def test_wait_for_waits_for_the_late_parent_not_just_the_names() -> None:
    receiver = OTLPReceiver()
    try:
        receiver.spans.extend([span("b", "a", "ingress"), span("c", "b", "engine")])
        threading.Timer(0.5, receiver.spans.append, [span("a", "client", "proxy")]).start()
        started = time.monotonic()
        spans = receiver.wait_for("t" * 32, {"engine"}, timeout_s=10, root="client")
        assert {s.name for s in spans} == {"proxy", "ingress", "engine"}
        assert time.monotonic() - started >= 0.4
        assert len(receiver.wait_for("t" * 32, {"engine"})) == 3
    finally:
        receiver.close()
