"""Fixtures of the gateway's HTTP-side tests: a fake OpenAI upstream and a real gateway on loopback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gateway_harness import (
    PRINCIPALS,
    BudgetQuota,
    KeyAuthenticator,
    ListLedger,
    LoopThread,
    Running,
    Stack,
    default_routes,
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
def make_stack(loop_thread: LoopThread) -> Iterator[Callable[..., Stack]]:
    started: list[tuple[Running, Any]] = []

    def make(
        *,
        quota: QuotaStore | None = None,
        routes: RouteTable | RouteHolder | None = None,
        **settings: Any,
    ) -> Stack:
        upstream, runner, upstream_url = loop_thread.run(start_fake_upstream())
        ledger = ListLedger()
        quota_store: Any = quota if quota is not None else BudgetQuota()
        table = routes if routes is not None else default_routes(upstream_url)
        holder = table if isinstance(table, RouteHolder) else RouteHolder(table)
        running = loop_thread.run(
            start_gateway(
                GatewaySettings.model_validate(settings),
                authenticator=KeyAuthenticator(PRINCIPALS),
                quota_store=quota_store,
                ledger=ledger,
                routes=holder,
            )
        )
        started.append((running, runner))
        return Stack(running, upstream, upstream_url, ledger, quota_store)

    yield make
    for running, runner in started:
        loop_thread.run(stop_gateway(running))
        loop_thread.run(runner.cleanup())


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()
