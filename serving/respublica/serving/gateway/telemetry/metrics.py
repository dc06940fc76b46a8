"""Prometheus metrics per tenant and model.

With several worker processes, prometheus_client's multiprocess mode is used: the CLI points
`PROMETHEUS_MULTIPROC_DIR` at a fresh directory before any worker starts, every worker writes its
samples there, and /metrics in any worker aggregates them (in-flight gauges are summed live).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

PREFIX = "respublica_gateway"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass(frozen=True)
class TenantLoad:
    """A tenant's requests now: being proxied to a model, and waiting for a slot (fair sharing)."""

    in_flight: int
    queued: int


@dataclass
class _Series:
    """The children of one (tenant, model) pair, looked up once: `.labels()` costs microseconds."""

    in_flight: Gauge
    latency: Histogram
    ttft: Histogram
    input_tokens: Counter
    output_tokens: Counter


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        # In multiprocess mode samples go to files; the collector reads them at scrape time.
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = None if self.multiprocess else self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered, by tenant, model and HTTP status.",
            ["tenant", "model", "status"],
            registry=reg,
        )
        self.tokens = Counter(
            f"{PREFIX}_tokens",
            "Tokens charged, by tenant, model and kind (input or output).",
            ["tenant", "model", "kind"],
            registry=reg,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request to the last byte answered.",
            ["tenant", "model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from request to the first generated chunk (streams).",
            ["tenant", "model"],
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self.rejections = Counter(
            f"{PREFIX}_rejections",
            "Requests refused before reaching a model, by tenant, model and reason.",
            ["tenant", "model", "reason"],
            registry=reg,
        )
        self.underestimates = Counter(
            f"{PREFIX}_reservation_underestimates",
            "Requests that used more tokens than were reserved for them (the bound was too low).",
            ["tenant", "model"],
            registry=reg,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_in_flight_requests",
            "Requests being proxied now.",
            ["tenant", "model"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.route_conflicts = Gauge(
            f"{PREFIX}_route_conflicts",
            "Served names published by more than one ModelDeployment (the rule picks one).",
            registry=reg,
            multiprocess_mode="max",
        )
        # Fair sharing (fairness/): who waits for a saturated model, how long, and the service each
        # tenant received (the weighted tokens its virtual token counter grew by).
        self.fair_queue_length = Gauge(
            f"{PREFIX}_fair_queue_length",
            "Requests waiting for a slot of a saturated model, by tenant and model.",
            ["tenant", "model"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.fair_queue_wait = Histogram(
            f"{PREFIX}_fair_queue_wait_seconds",
            "How long requests that waited for a slot waited, by tenant and model.",
            ["tenant", "model"],
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self.fair_service = Counter(
            f"{PREFIX}_fair_service",
            "Weighted service (w_in x input + w_out x output tokens, / the tenant's weight) counted by "
            "fair sharing, by tenant and model; input at its reserved bound.",
            ["tenant", "model"],
            registry=reg,
        )
        self.fair_holds = Counter(
            f"{PREFIX}_fair_holds",
            "Freed slots kept for a moment for the next request of the tenant VTC would serve next "
            "(anticipation), by model and outcome: taken by that tenant, or expired and handed on.",
            ["model", "outcome"],
            registry=reg,
        )
        # The policy side's health, sampled every few seconds (telemetry/health.py): unlabelled, so
        # every scrape shows them from the first one on.
        self.ledger_pending = Gauge(
            f"{PREFIX}_ledger_pending_records",
            "Usage records waiting to be written to the ledger database.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.ledger_dropped = Counter(
            f"{PREFIX}_ledger_dropped_records",
            "Usage records dropped from memory because the ledger queue was full (kept in the journal).",
            registry=reg,
        )
        self.ledger_quarantined = Counter(
            f"{PREFIX}_ledger_quarantined_records",
            "Usage records the ledger database refused, set aside in the journal's quarantine file.",
            registry=reg,
        )
        self.journal_failures = Counter(
            f"{PREFIX}_journal_failures",
            "Writes or fsyncs of the usage journal the disk refused.",
            registry=reg,
        )
        self.quota_store_up = Gauge(
            f"{PREFIX}_quota_store_up",
            "1 when the last operation reached the quota store, 0 when it failed (Redis unreachable).",
            registry=reg,
            multiprocess_mode="min",
        )
        self.quota_store_errors = Counter(
            f"{PREFIX}_quota_store_errors",
            "Quota store operations that failed (unreachable, timed out, a script refused).",
            registry=reg,
        )
        self.quota_store_rebuilds = Counter(
            f"{PREFIX}_quota_store_rebuilds",
            "Tenants whose state the quota store lost (restart, flush, eviction), rebuilt from the ledger.",
            registry=reg,
        )
        # Spend against budgets, per tenant and period (day, month), set every `interval_s` by
        # telemetry/budget.py from the ledger, never on the request path. Cardinality: at most two
        # series per tenant that has a budget, and tenants are created by an administrator (the
        # tenants file or the admin API), never by a caller.
        self.budget_used = Gauge(
            f"{PREFIX}_tenant_budget_used_ratio",
            "Tokens a tenant spent this UTC day or month (the ledger) divided by its token budget for "
            "the period; above 1 once overspent. Tenants without a budget (or a budget of 0) have none.",
            ["tenant", "period"],
            registry=reg,
            multiprocess_mode="mostrecent",  # every worker reads the same ledger: the latest reading
        )
        self.quota_store_up.set(1)
        self._series: dict[tuple[str, str], _Series] = {}
        self._answered: dict[tuple[str, str, int], Counter] = {}
        self._budgets: set[tuple[str, str]] = set()

    def series(self, tenant: str, model: str) -> _Series:
        key = (tenant, model)
        found = self._series.get(key)
        if found is None:
            found = _Series(
                in_flight=self.in_flight.labels(tenant, model),
                latency=self.latency.labels(tenant, model),
                ttft=self.ttft.labels(tenant, model),
                input_tokens=self.tokens.labels(tenant, model, "input"),
                output_tokens=self.tokens.labels(tenant, model, "output"),
            )
            self._series[key] = found
        return found

    def answered(self, tenant: str, model: str, status: int) -> Counter:
        """The requests counter's child for one (tenant, model, status), looked up once."""
        key = (tenant, model, status)
        found = self._answered.get(key)
        if found is None:
            found = self._answered[key] = self.requests.labels(tenant, model, str(status))
        return found

    def reject(self, tenant: str, model: str, reason: str, status: int) -> None:
        self.rejections.labels(tenant, model, reason).inc()
        self.answered(tenant, model, status).inc()

    def set_budgets(self, ratios: Mapping[tuple[str, str], float]) -> None:
        """The budget gauge's series now: (tenant, period) -> ratio. A series no longer given (the
        tenant was deleted or its budget lifted) reads 0, so that no last high reading can fire an
        alert; it is removed where prometheus_client can remove one (not in multiprocess mode,
        whose files keep it at 0 until the gateway restarts)."""
        for key in self._budgets - set(ratios):
            self.budget_used.labels(*key).set(0)
            if not self.multiprocess:
                self.budget_used.remove(*key)
        for key, ratio in ratios.items():
            self.budget_used.labels(*key).set(ratio)
        self._budgets = set(ratios)

    def load_by_tenant(self) -> dict[str, TenantLoad]:
        """Requests being proxied and requests waiting for a slot, per tenant, summed over models.

        Read from the in-flight and fair-queue gauges when asked (the console, the admin API), so
        the request path pays nothing more; with several worker processes, summed over the live
        ones, as /metrics shows them."""
        names = {f"{PREFIX}_in_flight_requests": 0, f"{PREFIX}_fair_queue_length": 1}
        families: Iterable[Metric]
        if self.multiprocess:
            from prometheus_client import multiprocess

            families = multiprocess.MultiProcessCollector(None).collect()  # type: ignore[no-untyped-call]
        else:
            families = [*self.in_flight.collect(), *self.fair_queue_length.collect()]
        counts: dict[str, list[int]] = {}
        for family in families:
            for sample in family.samples:
                index = names.get(sample.name)
                tenant = sample.labels.get("tenant")
                if index is None or tenant is None:
                    continue
                counts.setdefault(tenant, [0, 0])[index] += round(sample.value)
        return {tenant: TenantLoad(in_flight, queued) for tenant, (in_flight, queued) in counts.items()}

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
