"""The policy side's health as metrics: the ledger's backlog and losses, the quota store's reach.

The ledger and the stores keep plain counters (no prometheus_client call on the request path);
`HealthSampler` copies them into the gateway's metrics every `interval_s` in each worker process,
and at each scrape of this process, so the alerts in manifests/monitoring/prometheusrule.yaml
(RespublicaLedgerBacklogGrowing, RespublicaQuotaStoreDown) see them."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from respublica.serving.gateway.contracts import Ledger, QuotaStore
from respublica.serving.gateway.ledger import SqlLedger
from respublica.serving.gateway.quota.redis_store import RedisQuotaStore
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class HealthSampler:
    def __init__(
        self, metrics: GatewayMetrics, ledger: Ledger, quota: QuotaStore, interval_s: float = 2.0
    ) -> None:
        self.metrics = metrics
        self.ledger = ledger
        self.quota = quota
        self.interval_s = interval_s
        self._seen: dict[str, int] = {}  # what each counter was at the last sample
        self._task: asyncio.Task[None] | None = None

    def _count(self, name: str, value: int) -> int:
        """The increase of a monotonic count since the last sample."""
        delta = value - self._seen.get(name, 0)
        self._seen[name] = value
        return max(0, delta)

    def sample(self) -> None:
        m = self.metrics
        ledger = self.ledger
        if isinstance(ledger, SqlLedger):
            m.ledger_pending.set(ledger.pending)
            m.ledger_dropped.inc(self._count("dropped", ledger.dropped))
            m.ledger_quarantined.inc(self._count("quarantined", ledger.quarantined))
            if ledger.journal is not None:
                m.journal_failures.inc(self._count("journal", ledger.journal.failures))
        quota = self.quota
        if isinstance(quota, RedisQuotaStore):
            m.quota_store_up.set(1 if quota.up else 0)
            m.quota_store_errors.inc(self._count("store_errors", quota.errors))
            m.quota_store_rebuilds.inc(self._count("rebuilds", quota.rebuilds))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="health-sampler")

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception as exc:  # a metric must never stop the loop
                log.warning("sampling the gateway's health failed: %s", type(exc).__name__)
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sample()  # the last counts into the files (multiprocess) before the worker ends
