"""Shutdown paths: a request cancelled while it settles, a gateway that fails to start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from helpers.gateway_harness import LoopThread, free_socket, start_fake_upstream
from helpers.gateway_process import create_key, usage_rows, wait_healthy
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
    """Settles only once the test lets it: long enough for a cancel to arrive in between. It awaits,
    so it shields its work as the QuotaStore contract asks (the Redis store does the same)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.settling = asyncio.Event()

    async def settle(self, reservation: Any, used_tokens: int) -> None:
        await asyncio.shield(self._slow(reservation, used_tokens))

    async def _slow(self, reservation: Any, used_tokens: int) -> None:
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
    # The store shielded its settlement: it completes and charges what was used.
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


# A real gateway process (the real policy parts: SQLite keys and ledger, tenants file) served by
# uvicorn with a short grace period: `uvicorn.Server.shutdown` cancels what still runs when it ends.
GATEWAY_WITH_GRACE = """
import sys
from pathlib import Path

import uvicorn

from respublica.serving.gateway.settings import load_settings
from respublica.serving.gateway.wiring import build_from_settings

settings = load_settings(Path(sys.argv[1]))
app = build_from_settings(settings)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), timeout_graceful_shutdown=float(sys.argv[3]))
"""


def test_a_stream_cut_at_the_end_of_the_grace_period_ends_with_an_error_event_and_is_recorded(
    tmp_path: Path, loop_thread: LoopThread
) -> None:
    _upstream, runner, upstream_url = loop_thread.run(start_fake_upstream())
    tenant = "grace"
    (tmp_path / "routes.yaml").write_text(
        yaml.safe_dump({"models": [{"name": "m", "endpoints": [upstream_url]}]})
    )
    (tmp_path / "tenants.yaml").write_text(yaml.safe_dump({"tenants": [{"name": tenant}]}))
    db_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    key = asyncio.run(create_key(db_url, tenant))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database_url": db_url,
                "tenants_file": str(tmp_path / "tenants.yaml"),
                "routes_file": str(tmp_path / "routes.yaml"),
            }
        )
    )
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESPUBLICA_", "PROMETHEUS_"))}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", GATEWAY_WITH_GRACE, str(config), str(port), "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_healthy(url, process, log)
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 100,
            "stream": True,
            "test_tokens": 100,
            "test_delay": 0.2,  # 20 s of stream: far longer than the 1 s grace period
        }
        events: list[tuple[str, str]] = []  # (event, data)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as response:
            assert response.status_code == 200
            event, data = "message", ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    data = line.split(":", 1)[1].strip()
                elif line == "" and data:
                    events.append((event, data))
                    if len(events) == 2:
                        process.send_signal(signal.SIGTERM)  # in the middle of the stream
                    event, data = "message", ""
        assert process.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        loop_thread.run(runner.cleanup())

    # Some of the stream went through, then the cut: its last event is an OpenAI-shaped error.
    assert 2 <= len(events) < 100 and all(e == "message" for e, _ in events[:-1])
    assert events[-1][0] == "error"
    error = json.loads(events[-1][1])["error"]
    assert error["code"] == "shutting_down" and error["type"] == "server_error" and error["message"]
    # ... and it is settled and recorded as a shutdown.
    rows = asyncio.run(usage_rows(db_url, tenant))
    assert [(r["status"], r["error_type"], r["charge"] is not None) for r in rows] == [
        (503, "gateway_shutdown", True)
    ]
