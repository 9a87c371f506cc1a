"""What an engine replica tells the autoscaler: recent latency percentiles, queued work, and
the load it was offered (arrival rate, prompt and output lengths: the planner floor's input).

Pure bookkeeping (no Ray, no vLLM), fed by the engine host per request: the first requests of
a new replica (compile, cold caches) are not sampled, so a starting replica never drives a
decision with cold-start latencies.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class LatencyWindow:
    """Samples of the last `window_s` seconds; percentiles over them."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, value: float, weight: int = 1) -> None:
        now = self.clock()
        for _ in range(max(1, weight)):
            self.samples.append((now, value))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self.samples and self.samples[0][0] < now - self.window_s:
            self.samples.popleft()

    def values(self) -> list[float]:
        """The samples still in the window, oldest first."""
        self._trim(self.clock())
        return [v for _, v in self.samples]

    def percentile(self, q: float) -> float | None:
        """Nearest-rank `q`-th percentile (0 < q ≤ 100), None without samples in the window."""
        self._trim(self.clock())
        if not self.samples:
            return None
        values = sorted(v for _, v in self.samples)
        rank = max(1, math.ceil(q / 100 * len(values)))
        return values[rank - 1]


class ReplicaSLOSignals:
    """TTFT and ITL samples, prompt tokens still waiting for their first token, and the
    requests offered over the window (every one, warm or not: load is load)."""

    def __init__(self, window_s: float = 30.0, warmup_requests: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.created = clock()
        self.warmup_requests = warmup_requests
        self.ttft = LatencyWindow(window_s, clock)
        self.itl = LatencyWindow(window_s, clock)
        self.prompts = LatencyWindow(window_s, clock)  # each arrival's prompt tokens
        self.outputs = LatencyWindow(window_s, clock)  # each finished request's output tokens
        self.first_tokens = 0  # requests that reached their first token on this replica
        self.queued_prefill_tokens = 0
        self.peak_queued_prefill_tokens = 0  # since the last report

    def take_peak_queued_prefill_tokens(self) -> int:
        """Most prompt tokens waiting at once since the last call (then restarts from now):
        a burst between two reports is not missed by sampling a quiet instant."""
        peak = max(self.peak_queued_prefill_tokens, self.queued_prefill_tokens)
        self.peak_queued_prefill_tokens = self.queued_prefill_tokens
        return max(0, peak)

    def configure(self, window_s: float, warmup_requests: int) -> None:
        for window in (self.ttft, self.itl, self.prompts, self.outputs):
            window.window_s = window_s
        self.warmup_requests = warmup_requests

    def arrival_rate(self) -> float:
        """Requests per second that reached this replica over the window (over its life while
        younger, but over half a window at least: a new replica draining what queued for it
        at the handle would otherwise report a multiple of the steady rate)."""
        window = self.prompts.window_s
        span = min(window, max(window / 2, self.clock() - self.created))
        return len(self.prompts.values()) / span

    def recent_prompts(self) -> list[int]:
        return [int(v) for v in self.prompts.values()]

    def mean_output_tokens(self) -> float | None:
        outputs = self.outputs.values()
        return sum(outputs) / len(outputs) if outputs else None

    @property
    def warm(self) -> bool:
        return self.first_tokens >= self.warmup_requests

    def start(self, prompt_tokens: int, computes_prompt: bool = True) -> RequestSignals:
        """A request reached this replica; its prompt waits here for its first token unless
        another pool computes it (`computes_prompt=False`: a decode replica pulling its KV)."""
        self.prompts.add(prompt_tokens)
        queued = prompt_tokens if computes_prompt else 0
        self.queued_prefill_tokens += queued
        self.peak_queued_prefill_tokens = max(self.peak_queued_prefill_tokens,
                                              self.queued_prefill_tokens)
        return RequestSignals(self, queued)


class RequestSignals:
    """One request's timing on this replica: call its methods as outputs arrive."""

    def __init__(self, replica: ReplicaSLOSignals, prompt_tokens: int) -> None:
        self.replica = replica
        self.prompt_tokens = prompt_tokens
        self.started = self.last = replica.clock()
        self.tokens = 0
        self.queued = True
        self.finished = False

    def _dequeue(self) -> None:
        if self.queued:
            self.queued = False
            self.replica.queued_prefill_tokens -= self.prompt_tokens

    def on_output(self, new_tokens: int) -> None:
        """`new_tokens`: tokens this output added (coalesced outputs carry several)."""
        if new_tokens <= 0:
            return
        now = self.replica.clock()
        replica = self.replica
        sampled = replica.warm
        if self.tokens == 0:
            self._dequeue()
            replica.first_tokens += 1
            if sampled:
                replica.ttft.add((now - self.started) * 1000)
        elif sampled:
            replica.itl.add((now - self.last) * 1000 / new_tokens, weight=new_tokens)
        self.tokens += new_tokens
        self.last = now

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._dequeue()
        self.replica.outputs.add(self.tokens)
