"""The policy side's health as metrics: the ledger's backlog and losses, the quota store's reach.

The ledger and the stores keep plain counters (no prometheus_client call on the request path);
`HealthSampler` copies them into the gateway's metrics every `interval_s` in each worker process,
and at each scrape of this process, so the alerts in manifests/monitoring/prometheusrule.yaml
(RespublicaLedgerBacklogGrowing, RespublicaQuotaStoreDown) see them."""

from __future__ import annotations

from respublica.serving.gateway.contracts import Ledger, QuotaStore
from respublica.serving.gateway.ledger import SqlLedger
from respublica.serving.gateway.periodic import Periodic
from respublica.serving.gateway.quota.redis_store import RedisQuotaStore
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics


class HealthSampler:
    def __init__(
        self, metrics: GatewayMetrics, ledger: Ledger, quota: QuotaStore, interval_s: float = 2.0
    ) -> None:
        self.metrics = metrics
        self.ledger = ledger
        self.quota = quota
        self.interval_s = interval_s
        self._seen: dict[str, int] = {}  # what each counter was at the last sample
        self._loop = Periodic(self._sample_async, interval_s, name="sampling the gateway's health")

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

    async def _sample_async(self) -> None:
        self.sample()

    def start(self) -> None:
        """Sample at once, then every `interval_s`."""
        self._loop.start(now=True)

    async def stop(self) -> None:
        await self._loop.stop()
        self.sample()  # the last counts into the files (multiprocess) before the worker ends
