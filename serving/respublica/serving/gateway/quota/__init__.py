"""Quotas: pure arithmetic, the prompt-token bound, and two stores with the same semantics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from respublica.serving.gateway.db.repo import Repository, SpendTotal
from respublica.serving.gateway.quota.arithmetic import day_start, month_start
from respublica.serving.gateway.quota.base import FailPolicy, QuotaReservation
from respublica.serving.gateway.quota.memory import MemoryQuotaStore
from respublica.serving.gateway.quota.redis_store import RedisQuotaStore

__all__ = [
    "FailPolicy",
    "MemoryQuotaStore",
    "QuotaReservation",
    "RedisQuotaStore",
    "open_store",
    "rebuild_from_ledger",
    "seed_from_ledger",
]


def open_store(
    kind: str, *, redis_url: str | None = None, lease_s: float = 900.0, fail_policy: FailPolicy = "closed"
) -> MemoryQuotaStore | RedisQuotaStore:
    """The store the settings name: `memory` or `redis` (with its URL)."""
    if kind == "memory":
        return MemoryQuotaStore(lease_s=lease_s)
    if kind == "redis":
        if not redis_url:
            raise ValueError("the redis quota store needs a redis_url (redis://host:6379/0)")
        return RedisQuotaStore.from_url(redis_url, lease_s=lease_s, fail_policy=fail_policy)
    raise ValueError(f"unknown quota store {kind!r}: use memory or redis")


async def seed_from_ledger(
    store: MemoryQuotaStore | RedisQuotaStore, repo: Repository, now: float | None = None
) -> None:
    """Rebuild this UTC day's and month's spend from the usage ledger (call at start)."""
    now = time.time() if now is None else now
    day = await repo.spend_since(day_start(now))
    month = await repo.spend_since(month_start(now))
    await store.seed(day, month)


def rebuild_from_ledger(
    store: MemoryQuotaStore | RedisQuotaStore, repo: Repository, flush: Callable[[], Awaitable[None]]
) -> None:
    """Let a shared store rebuild a tenant whose state it lost (Redis restarted without
    persistence, flushed, failed over) from the ledger, after `flush` wrote this process's lines."""
    if not isinstance(store, RedisQuotaStore):
        return  # the memory store's state is lost only with its process, and seeded at start

    async def spend_of(tenant: str, now: float) -> tuple[Sequence[SpendTotal], Sequence[SpendTotal]]:
        day = [r for r in await repo.spend_since(day_start(now)) if r.tenant == tenant]
        month = [r for r in await repo.spend_since(month_start(now)) if r.tenant == tenant]
        return day, month

    store.rebuild_from = spend_of
    store.before_rebuild = flush
