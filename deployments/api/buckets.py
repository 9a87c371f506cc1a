"""Token buckets for per-key rate limits: pure arithmetic over a clock the caller passes.

A bucket of `per_minute` holds at most that much and refills it evenly over a minute. Taking
may drive it below zero (a request's tokens are known only when it ends): the debt is paid by
refill before the key is admitted again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Bucket:
    per_minute: float
    level: float
    at: float

    @classmethod
    def full(cls, per_minute: float, now: float) -> Bucket:
        return cls(per_minute, per_minute, now)

    def refill(self, now: float) -> float:
        """The level at `now` (refilled since the last look, capped at a minute's worth)."""
        if now > self.at:
            self.level = min(self.per_minute, self.level + (now - self.at) * self.per_minute / 60)
            self.at = now
        return self.level

    def take(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level -= amount

    def seconds_until(self, needed: float, now: float) -> float:
        """How long until the level reaches `needed` (0 if it has)."""
        missing = needed - self.refill(now)
        return 0.0 if missing <= 0 else missing * 60 / self.per_minute


def retry_after(seconds: float) -> str:
    """A `Retry-After` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
