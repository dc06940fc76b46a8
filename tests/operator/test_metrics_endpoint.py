"""The operator's metrics endpoint answers Prometheus' scrape with the work queue's metrics."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from respublica.operator.metrics import Metrics, serve

pytestmark = pytest.mark.timeout(30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_metrics_are_served_in_prometheus_text_format() -> None:
    metrics = Metrics()
    metrics.reconciles.labels("success").inc(3)
    port = _free_port()
    runner = await serve(metrics, "127.0.0.1", port)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    finally:
        await runner.cleanup()
    assert 'respublica_operator_reconciles_total{result="success"} 3.0' in text
    assert "# TYPE respublica_operator_reconcile_duration_seconds histogram" in text
