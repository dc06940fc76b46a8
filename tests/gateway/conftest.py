"""Fixtures of the gateway's HTTP-side tests: a fake OpenAI upstream and a real gateway on loopback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gateway_harness import (
    LoopThread,
    Running,
    Stack,
    default_routes,
    real_policy,
    start_fake_upstream,
    start_gateway,
    stop_gateway,
)

from respublica.serving.gateway.contracts import QuotaStore
from respublica.serving.gateway.routing.table import RouteHolder, RouteTable
from respublica.serving.gateway.settings import GatewaySettings


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def make_stack(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    started: list[tuple[Running, Any, Any]] = []

    def make(
        *,
        quota: QuotaStore | None = None,
        routes: RouteTable | RouteHolder | None = None,
        **settings: Any,
    ) -> Stack:
        upstream, runner, upstream_url = loop_thread.run(start_fake_upstream())
        policy = loop_thread.run(real_policy(tmp_path / f"gateway-{len(started)}.db", quota))
        table = routes if routes is not None else default_routes(upstream_url)
        holder = table if isinstance(table, RouteHolder) else RouteHolder(table)
        running = loop_thread.run(
            start_gateway(
                GatewaySettings.model_validate(settings),
                authenticator=policy.authenticator,
                quota_store=policy.quota,
                ledger=policy.ledger,
                routes=holder,
            )
        )
        started.append((running, runner, policy.db))
        return Stack(running, upstream, upstream_url, policy.ledger, policy.quota, policy.db)

    yield make
    for running, runner, db in started:
        loop_thread.run(stop_gateway(running))  # closes the ledger (flushing it) and the store
        loop_thread.run(runner.cleanup())
        loop_thread.run(db.close())


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()
