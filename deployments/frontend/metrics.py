"""pdserve's request metrics, exported through Ray Serve's metrics (`pdserve_*` names)."""

from __future__ import annotations

import time
from collections import Counter as Tally
from typing import Any

from ray.serve.metrics import Counter, Histogram

_LATENCY_BOUNDARIES = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
]


class RequestMetrics:
    """Per-model request metrics; one instance per model in the ingress replica."""

    def __init__(self, model_id: str, mode: str) -> None:
        tags = {"model": model_id, "mode": mode}
        self.requests = Counter(
            "pdserve_requests_total",
            description="Requests finished, by outcome (ok, error, cancelled).",
            tag_keys=("model", "mode", "outcome"),
        )
        self.requests.set_default_tags(dict(tags))
        self.fallbacks = Counter(
            "pdserve_prefill_fallbacks_total",
            description="PD requests whose remote prefill failed or timed out and were "
            "prefilled on the decode engine instead.",
            tag_keys=("model", "mode", "reason"),
        )
        self.fallbacks.set_default_tags(dict(tags))
        self.plans = Counter(
            "pdserve_prefill_plan_total",
            description="PD plan per request: prefill `remote` (prefill pool) or `local` "
            "(on the decode replica), with the rule that decided it.",
            tag_keys=("model", "mode", "plan", "reason"),
        )
        self.plans.set_default_tags(dict(tags))
        self.ttft, self.itl, self.e2e = (
            self._histogram(name, text, tags)
            for name, text in (
                ("pdserve_ttft_seconds", "Time to first token, as the ingress sees it."),
                ("pdserve_itl_seconds", "Time between output tokens: one sample per "
                 "streamed message, its gap divided by the tokens it carries."),
                ("pdserve_e2e_seconds", "Request latency from arrival to last token."),
            )
        )
        self.cold_start = Histogram(
            "pdserve_cold_start_wait_seconds",
            description="How long requests waited for a first replica of a pool at zero.",
            boundaries=_LATENCY_BOUNDARIES, tag_keys=("model", "mode", "outcome"),
        )
        self.cold_start.set_default_tags(dict(tags))
        self.resumes = Counter(
            "pdserve_request_resumes_total",
            description="Requests continued on another replica after theirs was lost, by "
            "reason (replica_died, engine_dead, stream_broken) and the new attempt's path "
            "(remote: prefill pool then a decode replica; local; colocated).",
            tag_keys=("model", "mode", "reason", "path"),
        )
        self.resumes.set_default_tags(dict(tags))
        self.recomputed = Counter(
            "pdserve_resume_recomputed_tokens_total",
            description="Tokens already delivered to clients that resumed requests put back "
            "into their prompts (computed again, or pulled from a prefill replica).",
            tag_keys=("model", "mode"),
        )
        self.recomputed.set_default_tags(dict(tags))
        self.resume_seconds = Histogram(
            "pdserve_resume_seconds",
            description="Streamed requests: from losing the replica to the next output "
            "the client receives.",
            boundaries=_LATENCY_BOUNDARIES, tag_keys=("model", "mode"),
        )
        self.resume_seconds.set_default_tags(dict(tags))
        self.tally: Tally[str] = Tally()  # the same events, readable in-process (stats())
        self.resume_waits: list[float] = []  # recent resume times (stats(), the note's p50/p99)

    @staticmethod
    def _histogram(name: str, description: str, tags: dict[str, str]) -> Histogram:
        histogram = Histogram(
            name, description=description, boundaries=_LATENCY_BOUNDARIES,
            tag_keys=("model", "mode"),
        )
        histogram.set_default_tags(dict(tags))
        return histogram

    def record_fallback(self, reason: str) -> None:
        self.fallbacks.inc(1, tags={"reason": reason})
        self.tally[f"fallback:{reason}"] += 1

    def record_plan(self, plan: Any) -> None:
        """`plan`: a `pdserve.routing.plan.Plan` (kind, reason)."""
        self.plans.inc(1, tags={"plan": plan.kind, "reason": plan.reason})
        self.tally[f"plan:{plan.kind}:{plan.reason}"] += 1

    def record_resume(self, resume: Any) -> None:
        """`resume`: a `pdserve.decode.orchestrator.Resume`."""
        self.resumes.inc(1, tags={"reason": resume.reason, "path": resume.path})
        if resume.recomputed_tokens:
            self.recomputed.inc(resume.recomputed_tokens)
        self.tally[f"resume:{resume.reason}:{resume.path}"] += 1
        self.tally["resume_recomputed_tokens"] += resume.recomputed_tokens

    def record_resumed(self, seconds: float) -> None:
        self.resume_seconds.observe(seconds)
        self.resume_waits = [*self.resume_waits[-999:], seconds]

    def record_cold_start(self, wait_s: float, timed_out: bool) -> None:
        outcome = "timeout" if timed_out else "served"
        self.cold_start.observe(wait_s, tags={"outcome": outcome})
        self.tally[f"cold_start:{outcome}"] += 1

    def start(self, streaming: bool) -> RequestTimer:
        return RequestTimer(self, streaming)


class RequestTimer:
    """Times one request: first token, gaps between tokens, the end."""

    def __init__(self, metrics: RequestMetrics, streaming: bool) -> None:
        self.metrics = metrics
        self.streaming = streaming  # a full (non-streamed) response has no first-token time
        self.started = self.last = time.perf_counter()
        self.tokens = 0

    def on_tokens(self, total_tokens: int) -> None:
        """`total_tokens`: tokens in this output (a delta when streaming)."""
        if total_tokens <= 0 or not self.streaming:
            return
        now = time.perf_counter()
        if self.tokens == 0:
            self.metrics.ttft.observe(now - self.started)
        else:  # one observation per message (a Ray metric call costs more than a token here)
            self.metrics.itl.observe((now - self.last) / total_tokens)
        self.tokens += total_tokens
        self.last = now

    def finish(self, outcome: str) -> None:
        self.metrics.requests.inc(1, tags={"outcome": outcome})
        self.metrics.tally[f"requests:{outcome}"] += 1
        if outcome == "ok":
            self.metrics.e2e.observe(time.perf_counter() - self.started)
