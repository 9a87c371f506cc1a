"""Per-key rate limits as one ingress replica applies them: requests and tokens per minute
(token buckets) and requests in flight, decided locally with no remote call per request.

Each replica keeps every key's buckets itself and debits its own requests at once; through a
`QuotaLedger` (`ledger.py`) it learns, every second, what the other replicas' requests of the
same key consumed, and debits that too. So a key's limit holds across ingress replicas up to
what the others admitted within that second. Tokens are debited when a request ends (prompt +
completion, streamed or not).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from starlette.responses import JSONResponse

from pdserve.deployments.api.buckets import Bucket, retry_after
from pdserve.deployments.api.keys import Caller
from pdserve.deployments.config.security import RateLimits

#: float slack: a client that waited exactly `Retry-After` is admitted
EPSILON = 1e-6
#: per key: (requests, tokens) consumed
Usage = dict[str, tuple[float, float]]


def rate_limited(caller: Caller, what: str, limit: float, wait_s: float) -> JSONResponse:
    """OpenAI's 429 (`rate_limit_exceeded`) with `Retry-After`."""
    body = {"error": {"message": f"Rate limit reached for the API key `{caller.name}`: {what} "
                                 f"({limit:g}). Retry after {retry_after(wait_s)} s.",
                      "type": "rate_limit_error", "param": None,
                      "code": "rate_limit_exceeded"}}
    return JSONResponse(body, status_code=HTTPStatus.TOO_MANY_REQUESTS,
                        headers={"Retry-After": retry_after(wait_s)})


def full_buckets(limits: RateLimits, now: float) -> tuple[Bucket | None, Bucket | None]:
    """A key's (requests, tokens) buckets, full; None for a bound the key does not have."""
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    return (Bucket.full(rpm, now) if rpm else None, Bucket.full(tpm, now) if tpm else None)


@dataclass
class KeyState:
    limits: RateLimits
    requests: Bucket | None
    tokens: Bucket | None
    in_flight: int = 0
    pending: list[float] = field(default_factory=lambda: [0.0, 0.0])


class Quotas:
    """One ingress replica's view of every limited key's budget."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._keys: dict[str, KeyState] = {}

    def meet(self, caller: Caller) -> None:
        """Start `caller`'s buckets (full) before anything is admitted for it."""
        self._state(caller)

    def _state(self, caller: Caller) -> KeyState | None:
        limits = caller.rate_limits
        if limits is None:
            return None
        state = self._keys.get(caller.name)
        if state is None or state.limits != limits:  # new, or its limits changed
            fresh = KeyState(limits, *full_buckets(limits, self.clock()))
            if state is not None:  # its requests in flight and unreported usage carry over
                fresh.in_flight, fresh.pending = state.in_flight, state.pending
            self._keys[caller.name] = state = fresh
        return state

    def knows(self, caller: Caller) -> bool:
        state = self._keys.get(caller.name)
        return state is not None and state.limits == caller.rate_limits

    def admit(self, caller: Caller) -> JSONResponse | None:
        """None (and the request counted) if `caller` is within its limits, else the 429."""
        state = self._state(caller)
        if state is None:
            return None
        now, limits = self.clock(), state.limits
        if limits.concurrent_requests is not None and \
                state.in_flight >= limits.concurrent_requests:
            return rate_limited(caller, "requests in flight", limits.concurrent_requests, 1)
        if state.requests is not None and state.requests.refill(now) < 1 - EPSILON:
            return rate_limited(caller, "requests per minute", state.requests.per_minute,
                                state.requests.seconds_until(1, now))
        if state.tokens is not None and state.tokens.refill(now) <= 0:
            return rate_limited(caller, "tokens per minute", state.tokens.per_minute,
                                state.tokens.seconds_until(1e-9, now))
        if state.requests is not None:
            state.requests.take(1, now)
        state.pending[0] += 1
        state.in_flight += 1
        return None

    def finish(self, caller: Caller, tokens: int) -> None:
        """The admitted request ended having used `tokens` (prompt + completion)."""
        state = self._keys.get(caller.name)
        if state is None:
            return
        state.in_flight -= 1
        if state.tokens is not None:
            state.tokens.take(tokens, self.clock())
        state.pending[1] += tokens

    # -- sharing with the other replicas (through the ledger) ---------------------------------
    def take_pending(self) -> tuple[Usage, dict[str, RateLimits]]:
        """What each key consumed here since the last exchange (then forgotten), with its
        limits."""
        usage = {name: (s.pending[0], s.pending[1]) for name, s in self._keys.items()}
        for state in self._keys.values():
            state.pending = [0.0, 0.0]
        return usage, {name: s.limits for name, s in self._keys.items()}

    def take_others(self, others: Usage) -> None:
        """Debit what the other replicas' requests of each key consumed (from the ledger)."""
        now = self.clock()
        for name, (requests, tokens) in others.items():
            state = self._keys.get(name)
            if state is None:
                continue
            for bucket, amount in ((state.requests, requests), (state.tokens, tokens)):
                if bucket is not None and amount:
                    bucket.take(amount, now)

    def cap_levels(self, levels: Usage, reported: Usage) -> None:
        """A key met here for the first time: its buckets hold at most what the ledger says
        the other replicas left, less what was consumed here (`reported`, and since)."""
        now = self.clock()
        for name, (requests, tokens) in levels.items():
            state = self._keys.get(name)
            if state is None:
                continue
            sent = reported.get(name, (0.0, 0.0))
            for bucket, level, used, pending in (
                    (state.requests, requests, sent[0], state.pending[0]),
                    (state.tokens, tokens, sent[1], state.pending[1])):
                if bucket is not None:
                    bucket.level = min(bucket.refill(now), level - used - pending)
