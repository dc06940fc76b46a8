"""The policy side's health reaches /metrics: the ledger's backlog and losses, the quota store's reach."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from respublica.serving.gateway.contracts import Limits, Principal, UsageRecord
from respublica.serving.gateway.db import Repository, open_database
from respublica.serving.gateway.ledger import SqlLedger
from respublica.serving.gateway.quota import RedisQuotaStore
from respublica.serving.gateway.telemetry.health import HealthSampler
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics


def usage(i: int) -> UsageRecord:
    return UsageRecord(f"r{i}", 0.0, "acme", "k1", "m", "http://e", 1, 1, 1.0, None, 200)


def value(registry: CollectorRegistry, name: str) -> float:
    found = registry.get_sample_value(name)
    assert found is not None, name
    return found


async def test_backlog_losses_and_a_store_down_are_metrics(
    tmp_path: Path, spawn_redis: Callable[[], Any]
) -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    db = await open_database(f"sqlite:///{tmp_path / 'l.db'}")
    ledger = SqlLedger(Repository(db), max_pending=3, interval_s=3600)
    server = spawn_redis()
    store = RedisQuotaStore.from_url(server.url, timeout_s=0.3)
    sampler = HealthSampler(metrics, ledger, store)
    try:
        sampler.sample()
        assert value(registry, "respublica_gateway_quota_store_up") == 1
        assert value(registry, "respublica_gateway_ledger_pending_records") == 0
        for i in range(5):
            ledger.record(usage(i))
        server.stop()
        await store.admit(Principal(tenant="acme", subject="k1", tenant_limits=Limits()), 1)
        sampler.sample()
        sampler.sample()  # counts are copied as increases: a second sample adds nothing
        assert value(registry, "respublica_gateway_ledger_pending_records") == 3
        assert value(registry, "respublica_gateway_ledger_dropped_records_total") == 2
        assert value(registry, "respublica_gateway_quota_store_up") == 0
        assert value(registry, "respublica_gateway_quota_store_errors_total") >= 1
    finally:
        await store.close()
        await ledger.close()
        await db.close()
