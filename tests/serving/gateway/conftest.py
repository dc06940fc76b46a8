"""Fixtures of the gateway tests: quota stores of both kinds, a fake OpenAI upstream and a real gateway
on loopback."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.clock import Clock
from helpers.gateway_harness import (
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
from respublica.serving.gateway.quota import MemoryQuotaStore, RedisQuotaStore
from respublica.serving.gateway.routing.table import RouteHolder, RouteTable
from respublica.serving.gateway.settings import GatewaySettings

Store = MemoryQuotaStore | RedisQuotaStore


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def make_store(
    store_kind: str, request: pytest.FixtureRequest, clock: Clock
) -> AsyncIterator[Callable[..., Store]]:
    """Stores of this test's kind; Redis ones made by one test share a key prefix (one "cluster")."""
    made: list[Store] = []
    prefix = f"t{uuid.uuid4().hex[:8]}"
    redis_url = request.getfixturevalue("redis_url") if store_kind == "redis" else None

    def make(**kwargs: Any) -> Store:
        kwargs.setdefault("clock", clock)
        store: Store
        if redis_url is not None:
            store = RedisQuotaStore.from_url(redis_url, prefix=prefix, **kwargs)
        else:
            kwargs.pop("fail_policy", None)
            store = MemoryQuotaStore(**kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


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
