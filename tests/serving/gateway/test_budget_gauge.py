"""The budget gauge (telemetry/budget.py) over a real SQLite ledger: spend today and this month
against each tenant's budgets, as the console's bars show it; series appear and go with budgets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from helpers.clock import Clock
from respublica.serving.gateway.admin_service import AdminService, TenantSpend
from respublica.serving.gateway.contracts import Limits, UsageRecord
from respublica.serving.gateway.db import Repository, open_database
from respublica.serving.gateway.telemetry.budget import BudgetSampler
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics

NAME = "respublica_gateway_tenant_budget_used_ratio"


def record(rid: str, at: float, tenant: str, tokens: int, subject: str = "k") -> UsageRecord:
    return UsageRecord(
        request_id=rid,
        started_at=at,
        tenant=tenant,
        subject=subject,
        model="m",
        endpoint="/v1/chat/completions",
        input_tokens=tokens,
        output_tokens=0,
        latency_ms=5.0,
        ttft_ms=None,
        status=200,
        stream=False,
    )


def scraped(metrics: GatewayMetrics) -> dict[tuple[str, str], float]:
    text = metrics.render()[0].decode()
    return {
        (s.labels["tenant"], s.labels["period"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == NAME
    }


@pytest.fixture
async def service(tmp_path: Path, clock: Clock) -> AsyncIterator[AdminService]:
    db = await open_database(f"sqlite:///{tmp_path}/budget.db")
    declared = {"alpha": Limits(tokens_per_day=1000, tokens_per_month=10_000), "open": Limits()}
    yield AdminService(Repository(db), declared=declared, clock=clock)
    await db.close()


async def test_ratios_of_spend_today_and_this_month(service: AdminService, clock: Clock) -> None:
    now = clock()
    await service.create_tenant("admin", "shut", Limits(tokens_per_day=0))
    await service.create_tenant("admin", "half", Limits(tokens_per_month=200))
    await service.repo.insert_usage(
        [
            record("a1", now - 60, "alpha", 600),
            record("a2", now - 30, "alpha", 320, subject="oidc-user"),  # summed over subjects
            record("a3", now - 86400, "alpha", 80),  # yesterday: this month, not today
            record("a4", now - 40 * 86400, "alpha", 5000),  # another month: neither
            record("o1", now - 60, "open", 10**9),  # no budget: no series
            record("s1", now - 60, "shut", 0),
            record("h1", now - 60, "half", 100),
        ]
    )
    metrics = GatewayMetrics(CollectorRegistry())
    await BudgetSampler(metrics, service.spend).sample()
    assert scraped(metrics) == {
        ("alpha", "day"): pytest.approx(0.92),
        ("alpha", "month"): pytest.approx(0.1),
        ("half", "month"): pytest.approx(0.5),
    }


async def test_series_follow_the_budgets(service: AdminService, clock: Clock) -> None:
    """A deleted tenant or a lifted budget leaves no series behind that could keep an alert firing;
    the next UTC day starts the day's ratio again."""
    await service.create_tenant("admin", "beta", Limits(tokens_per_day=100))
    await service.repo.insert_usage([record("b1", clock() - 60, "beta", 95)])
    metrics = GatewayMetrics(CollectorRegistry())
    sampler = BudgetSampler(metrics, service.spend)
    await sampler.sample()
    assert scraped(metrics)[("beta", "day")] == pytest.approx(0.95)
    clock.advance(86400)
    await sampler.sample()
    assert scraped(metrics)[("beta", "day")] == 0.0
    await service.set_limits("admin", "beta", Limits())
    await sampler.sample()
    assert ("beta", "day") not in scraped(metrics)
    await service.set_limits("admin", "beta", Limits(tokens_per_day=100))
    await sampler.sample()
    assert ("beta", "day") in scraped(metrics)
    await service.delete_tenant("admin", "beta")
    await sampler.sample()
    assert set(scraped(metrics)) == {("alpha", "day"), ("alpha", "month")}


async def test_a_failing_read_keeps_the_gateway_up(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    async def unreachable() -> list[TenantSpend]:
        raise ConnectionError("database down")

    sampler = BudgetSampler(GatewayMetrics(CollectorRegistry()), unreachable, interval_s=3600)
    await sampler.start()
    await sampler.stop()
    assert "reading spend against budgets failed: ConnectionError" in caplog.text
