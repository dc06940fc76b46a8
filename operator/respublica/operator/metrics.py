"""The operator's Prometheus metrics and the small HTTP endpoint that serves them.

One `Metrics` object per operator process, on its own registry (so tests can build several and
read them without a global state). Served at `/metrics` on `RESPUBLICA_METRICS_PORT` (9090; the
pod's 8080 is kopf's liveness endpoint) by an aiohttp server on the operator's own event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Reconcile outcomes, the `result` label of respublica_operator_reconciles_total.
SUCCESS = "success"
RETRY = "retry"  # failed; will run again after the retry policy's delay


@dataclass
class Metrics:
    """Reconciles by result, their duration, the queue's depth and in-flight runs, the retries."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        self.reconciles = Counter(
            "respublica_operator_reconciles",
            "Reconciles of ModelDeployments, by result (success, retry).",
            ["result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "respublica_operator_reconcile_duration_seconds",
            "How long one reconcile took (API calls included).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "respublica_operator_queue_depth",
            "ModelDeployments waiting for a reconcile (kicked, not yet running).",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "respublica_operator_reconciles_in_flight",
            "Reconciles running now (at most RESPUBLICA_MAX_CONCURRENT_RECONCILES).",
            registry=self.registry,
        )
        self.retries = Counter(
            "respublica_operator_retries",
            "Failed reconciles scheduled to run again, by the exception's type.",
            ["error"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


async def serve(metrics: Metrics, host: str, port: int) -> web.AppRunner:
    """Serve `/metrics` on host:port; the caller cleans the returned runner up."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
