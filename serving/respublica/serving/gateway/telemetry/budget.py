"""Spend against budgets as a gauge: `respublica_gateway_tenant_budget_used_ratio{tenant, period}`.

Every `interval_s` (and once at start) `BudgetSampler` reads what the console's budget bars read,
`AdminService.spend` (the tenants and their limits; each tenant's tokens this UTC day and month
from the ledger), and sets one series per tenant and period that has a budget. Nothing is added to
the request path: the cost is two grouped ledger queries and one tenant listing per interval per
worker process. The alert RespublicaTenantNearBudget (manifests/monitoring/prometheusrule.yaml)
fires from 90 %, before the budget is spent and requests are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from respublica.serving.gateway.admin_service import TenantSpend
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics

log = logging.getLogger(__name__)

PERIODS = ("day", "month")


def budget_ratios(spend: Sequence[TenantSpend]) -> dict[tuple[str, str], float]:
    """(tenant, period) -> spent / budget, for the budgets a tenant has. A budget of 0 shuts a tenant
    off on purpose: it is not "near" anything, so it gets no series (and no alert)."""
    out: dict[tuple[str, str], float] = {}
    for row in spend:
        for period, budget in zip(PERIODS, (row.today, row.month), strict=True):
            if budget.limit:  # None (unlimited) and 0 (shut off) have no ratio to watch
                fraction = budget.fraction
                assert fraction is not None
                out[(row.tenant.name, period)] = fraction
    return out


class BudgetSampler:
    def __init__(
        self,
        metrics: GatewayMetrics,
        spend: Callable[[], Awaitable[list[TenantSpend]]],
        interval_s: float = 30.0,
    ) -> None:
        self.metrics = metrics
        self.spend = spend
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        self.metrics.set_budgets(budget_ratios(await self.spend()))

    async def start(self) -> None:
        """The first reading before the gateway serves (a failure is logged, not fatal), then the loop."""
        await self._sample_quietly()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="budget-sampler")

    async def _sample_quietly(self) -> None:
        try:
            await self.sample()
        except Exception as exc:  # an unreachable database must not stop the loop or the gateway
            log.warning("reading spend against budgets failed: %s", type(exc).__name__)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._sample_quietly()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
