"""The minute budgets all ingress replicas of an app share: a small Ray actor (`QuotaLedger`)
that each replica's `LedgerLink` trades with once a second — what its keys consumed, for what
the other replicas' consumed. Only a key's first request on a replica waits for it (at most
`MEET_TIMEOUT_S`).

Each replica keeps its own buckets and debits the others' usage as it learns it; the ledger's
own buckets only tell a replica that meets a key for the first time what is left of the key's
minute. If the ledger is lost, Ray restarts it empty: the replicas keep their buckets, and what
is forgotten is the others' usage of that second (and, for a replica meeting a key afterwards,
the minute's history); while it is unreachable each replica limits on its own (with N ingress
replicas a key may then get up to N times its limit).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import ray

from pdserve.deployments.api.buckets import Bucket
from pdserve.deployments.api.keys import Caller
from pdserve.deployments.api.quotas import Quotas, Usage, full_buckets
from pdserve.deployments.config.security import RateLimits
from pdserve.deployments.engine.actors import PDSERVE_NAMESPACE

logger = logging.getLogger(__name__)

EXCHANGE_PERIOD_S = 1.0
MEET_TIMEOUT_S = 2.0


class LedgerBooks:
    """What every limited key consumed on all ingress replicas of one app (`QuotaLedger`):
    each replica reports its own and learns the others' since its last report; a replica
    reporting a key for the first time learns the level all replicas left of its minute."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}
        self.seen: dict[str, dict[str, list[float]]] = {}  # replica → totals at its last report
        self.buckets: dict[str, tuple[RateLimits, Bucket | None, Bucket | None]] = {}

    def _buckets(self, name: str, limits: RateLimits, now: float
                 ) -> tuple[Bucket | None, Bucket | None]:
        known = self.buckets.get(name)
        if known is None or known[0] != limits:
            known = (limits, *full_buckets(limits, now))
            self.buckets[name] = known
        return known[1], known[2]

    def exchange(self, replica: str, usage: Usage, limits: dict[str, RateLimits],
                 now: float | None = None) -> tuple[Usage, Usage]:
        """Add `replica`'s usage. Returns what the other replicas consumed since it last
        reported, and for keys it reports for the first time the levels the others left."""
        now = time.time() if now is None else now
        seen = self.seen.setdefault(replica, {})
        others: Usage = {}
        first: Usage = {}
        for name, (requests, tokens) in usage.items():
            known = name in self.totals  # another replica reported it before
            total = self.totals.setdefault(name, [0.0, 0.0])
            request_bucket, token_bucket = self._buckets(name, limits[name], now)
            if name in seen:
                last = seen[name]
                others[name] = (total[0] - last[0], total[1] - last[1])
            elif known:  # (a key nobody reported yet: this replica's own buckets are all)
                first[name] = (request_bucket.refill(now) if request_bucket else 0.0,
                               token_bucket.refill(now) if token_bucket else 0.0)
            total[0] += requests
            total[1] += tokens
            seen[name] = list(total)
            for bucket, amount in ((request_bucket, requests), (token_bucket, tokens)):
                if bucket is not None:
                    bucket.take(amount, now)
        return others, first


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
        self.replica = uuid.uuid4().hex

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def meet(self, caller: Caller) -> None:
        """A key's first request here: take what the other replicas left of its minute (one
        remote call per key and replica), so a replica cannot hand out a fresh minute."""
        self.quotas.meet(caller)
        assert caller.rate_limits is not None
        try:
            await asyncio.wait_for(self._trade({caller.name: (0.0, 0.0)},
                                               {caller.name: caller.rate_limits}),
                                   MEET_TIMEOUT_S)
        except TimeoutError:  # limit on this replica's view alone
            logger.warning("quota ledger slow (over %g s); limiting per replica",
                           MEET_TIMEOUT_S)

    async def _trade(self, usage: Usage, limits: dict[str, RateLimits]) -> None:
        """Report `usage`; debit the others' and, for keys new here, cap the buckets."""
        try:
            ledger = await asyncio.to_thread(self._connect)  # (a GCS call, off the loop)
            others, first = await ledger.exchange.remote(self.replica, usage, limits)
        except Exception as exc:  # keep limiting locally; try again next time
            logger.warning("quota ledger unreachable (%s); limiting per replica",
                           type(exc).__name__)
            self._ledger = None
            return
        self.quotas.take_others(others)
        self.quotas.cap_levels(first, usage)

    def _connect(self) -> Any:
        if self._ledger is None:
            self._ledger = QuotaLedger.options(  # type: ignore[attr-defined]
                name=ledger_name(self.app_name), namespace=PDSERVE_NAMESPACE,
                lifetime="detached", get_if_exists=True).remote()
        return self._ledger

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(EXCHANGE_PERIOD_S)
            usage, limits = self.quotas.take_pending()
            if usage:
                await self._trade(usage, limits)
