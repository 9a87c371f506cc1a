"""The minute budgets all ingress replicas of an app share: a small Ray actor (`QuotaLedger`)
that each replica's `LedgerLink` trades with once a second — what its keys consumed, for the
levels all replicas together left. No request waits for it.

If the ledger is lost, Ray restarts it with full buckets (for at most one minute a key may
get up to its limit again); while it is unreachable each replica keeps limiting on its own
(with N ingress replicas a key may then get up to N times its limit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from pdserve.deployments.api.buckets import Bucket
from pdserve.deployments.api.quotas import Quotas, Usage
from pdserve.deployments.config.security import RateLimits

logger = logging.getLogger(__name__)

EXCHANGE_PERIOD_S = 1.0
LEDGER_NAMESPACE = "pdserve"


class LedgerBooks:
    """Every limited key's buckets, for all ingress replicas of one app (`QuotaLedger`)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[RateLimits, Bucket | None, Bucket | None]] = {}

    def exchange(self, usage: Usage, limits: dict[str, RateLimits],
                 now: float | None = None) -> Usage:
        """Debit what a replica's keys consumed; the levels left to all replicas."""
        now = time.time() if now is None else now
        levels: Usage = {}
        for name, key_limits in limits.items():
            known = self.keys.get(name)
            if known is None or known[0] != key_limits:
                rpm, tpm = key_limits.requests_per_minute, key_limits.tokens_per_minute
                known = (key_limits, Bucket.full(rpm, now) if rpm else None,
                         Bucket.full(tpm, now) if tpm else None)
                self.keys[name] = known
            _, requests, tokens = known
            used = usage.get(name, (0.0, 0.0))
            for bucket, amount in ((requests, used[0]), (tokens, used[1])):
                if bucket is not None:
                    bucket.take(amount, now)
            levels[name] = (requests.refill(now) if requests else 0.0,
                            tokens.refill(now) if tokens else 0.0)
        return levels


QuotaLedger = ray.remote(num_cpus=0, max_restarts=-1)(LedgerBooks)


def ledger_name(app_name: str) -> str:
    return f"quota-ledger-{app_name}"


class LedgerLink:
    """A replica's side of the ledger: trades in the background, started with the first
    request (when the replica's event loop runs)."""

    def __init__(self, quotas: Quotas, app_name: str) -> None:
        self.quotas = quotas
        self.app_name = app_name
        self._task: asyncio.Task[None] | None = None
        self._ledger: Any = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _connect(self) -> Any:
        if self._ledger is None:
            self._ledger = QuotaLedger.options(  # type: ignore[attr-defined]
                name=ledger_name(self.app_name), namespace=LEDGER_NAMESPACE,
                lifetime="detached", get_if_exists=True).remote()
        return self._ledger

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(EXCHANGE_PERIOD_S)
            usage, limits = self.quotas.take_pending()
            if not limits:
                continue
            try:
                levels = await self._connect().exchange.remote(usage, limits)
            except Exception as exc:  # keep limiting locally; try again next period
                logger.warning("quota ledger unreachable (%s); limiting per replica",
                               type(exc).__name__)
                self._ledger = None
                continue
            self.quotas.apply_levels(levels)
