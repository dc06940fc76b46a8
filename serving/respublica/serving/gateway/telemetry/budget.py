"""Spend against budgets as a gauge: `respublica_gateway_tenant_budget_used_ratio{tenant, period}`.

Every `interval_s` (and once at start) `BudgetSampler` reads what the console's budget bars read,
`AdminService.spend` (the tenants and their limits; each tenant's tokens this UTC day and month
from the ledger), and sets one series per tenant and period that has a budget. Nothing is added to
the request path: the cost is two grouped ledger queries and one tenant listing per interval per
worker process. The alert RespublicaTenantNearBudget (manifests/monitoring/prometheusrule.yaml)
fires from 90 %, before the budget is spent and requests are refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from respublica.serving.gateway.admin_service import TenantSpend
from respublica.serving.gateway.periodic import Periodic
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics

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
        self._loop = Periodic(self.sample, interval_s, name="reading spend against budgets")

    async def sample(self) -> None:
        self.metrics.set_budgets(budget_ratios(await self.spend()))

    async def start(self) -> None:
        """The first reading before the gateway serves (a failure is logged, not fatal), then the loop."""
        await self._loop.step_quietly()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
