"""Shutdown paths: a request cancelled while it settles, a gateway that fails to start."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from respublica.serving.gateway.contracts import Admission, Authenticator, Limits, Principal, UsageRecord
from respublica.serving.gateway.quota import MemoryQuotaStore
from respublica.serving.gateway.routes.call import Call, GatewayContext, settle_and_observe
from respublica.serving.gateway.routing.table import RouteHolder
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics
from respublica.serving.gateway.upstream import UpstreamClient


class Ledger:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def record(self, record: UsageRecord) -> None:
        self.records.append(record)


class SlowSettleStore(MemoryQuotaStore):
    """Settles only once the test lets it: long enough for a cancel to arrive in between."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.settling = asyncio.Event()

    async def settle(self, reservation: Any, used_tokens: int) -> None:
        self.settling.set()
        await self.go.wait()
        await super().settle(reservation, used_tokens)


async def test_a_cancel_while_settling_still_ends_the_span_counts_and_writes_the_ledger_line() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    store = SlowSettleStore()
    ledger = Ledger()
    metrics = GatewayMetrics(CollectorRegistry())
    ctx = GatewayContext(
        authenticator=cast(Authenticator, None),
        quota=store,
        ledger=ledger,
        routes=RouteHolder(),
        upstream=UpstreamClient(),
        tracer=tracer,
        metrics=metrics,
    )
    principal = Principal(tenant="acme", subject="key1", tenant_limits=Limits(tokens_per_day=1000))
    admission = await store.admit(principal, 100)
    assert isinstance(admission, Admission)
    call = Call()
    call.principal, call.model, call.endpoint = principal, "m", "chat.completions"
    call.reservation = admission.reservation
    call.input_tokens, call.output_tokens = 10, 5

    task = asyncio.create_task(settle_and_observe(ctx, call, tracer.start_span("call")))
    await asyncio.wait_for(store.settling.wait(), 5)
    task.cancel()  # the server shuts down
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)

    assert [r.request_id for r in ledger.records] == [call.request_id]
    assert [s.name for s in exporter.get_finished_spans()] == ["call"]
    sample = metrics.registry.get_sample_value(
        "respublica_gateway_requests_total", {"tenant": "acme", "model": "m", "status": "200"}
    )
    assert sample == 1.0
    # The settlement itself was shielded: it completes and charges what was used.
    store.go.set()
    for _ in range(100):
        if await store.spent("acme", "t:cc") == 0:
            break
        await asyncio.sleep(0.01)
    assert await store.spent("acme", "t:cc") == 0


class ClosingStore(MemoryQuotaStore):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class ClosingLedger(Ledger):
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_an_admin_port_that_can_not_be_bound_still_shuts_everything_down() -> None:
    from respublica.serving.gateway.app import create_app
    from respublica.serving.gateway.settings import load_settings

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = load_settings(
            environ={}, overrides={"admin_host": "127.0.0.1", "admin_port": taken.getsockname()[1]}
        )
        store, ledger, shut = ClosingStore(), ClosingLedger(), []

        async def shutdown_hook() -> None:
            shut.append(True)

        app = create_app(
            settings,
            authenticator=cast(Authenticator, None),
            quota_store=store,
            ledger=cast(Any, ledger),
            route_table=RouteHolder(),
            on_shutdown=[shutdown_hook],
        )
        with pytest.raises(OSError, match="admin listener"):
            async with app.router.lifespan_context(app):
                pytest.fail("started although the admin port is taken")
    assert shut and store.closed and ledger.closed
    assert not [task for task in asyncio.all_tasks() if task.get_name() == "lease-keeper"]
