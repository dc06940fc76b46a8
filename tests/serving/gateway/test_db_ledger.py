"""The database on both dialects (SQLite file, a real PostgreSQL where installed) and the ledger on it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import pytest

from respublica.serving.gateway.contracts import Admission, Limits, Principal, Rejection, UsageRecord
from respublica.serving.gateway.db import DatabaseError, Repository, open_database
from respublica.serving.gateway.db.repo import utc_day
from respublica.serving.gateway.ledger import SqlLedger
from respublica.serving.gateway.quota import MemoryQuotaStore, seed_from_ledger
from respublica.serving.gateway.quota.arithmetic import day_name, day_start, month_name

DAY = 86400.0
T0 = 1_795_000_030.0  # 2026-11-18 11:07:10 UTC


def usage(
    i: int,
    *,
    tenant: str = "acme",
    subject: str = "k1",
    model: str = "m",
    at: float = T0,
    inp: int = 10,
    out: int = 5,
    status: int = 200,
) -> UsageRecord:
    return UsageRecord(
        request_id=f"req-{tenant}-{i}",
        started_at=at,
        tenant=tenant,
        subject=subject,
        model=model,
        endpoint="/v1/chat/completions",
        input_tokens=inp,
        output_tokens=out,
        latency_ms=12.5,
        ttft_ms=3.0,
        status=status,
        stream=True,
    )


async def test_tenants_and_keys_round_trip(repo: Repository) -> None:
    limits = Limits(tokens_per_day=1000, allowed_models=("a", "b"), default_max_tokens=64)
    assert await repo.create_tenant("acme", limits)
    assert not await repo.create_tenant("acme", Limits())
    assert (await repo.get_tenant("acme")).limits == limits  # type: ignore[union-attr]
    assert await repo.set_tenant_limits("acme", Limits(max_concurrent=3))
    assert not await repo.set_tenant_limits("nobody", Limits())
    await repo.create_key(
        "kid1", "acme", "hash1", name="ci", limits=Limits(requests_per_minute=5), expires_at=T0
    )
    key = await repo.get_key("kid1")
    assert key is not None and key.limits == Limits(requests_per_minute=5) and key.expires_at == T0
    assert [k.key_id for k in await repo.list_keys("acme")] == ["kid1"]
    assert await repo.revoke_key("kid1")
    assert not await repo.revoke_key("kid1")
    assert (await repo.get_key("kid1")).revoked_at is not None  # type: ignore[union-attr]
    await repo.create_key("kid2", "acme", "hash2")
    assert await repo.delete_tenant("acme")
    assert await repo.get_tenant("acme") is None
    assert (await repo.get_key("kid2")).revoked_at is not None  # type: ignore[union-attr]
    await repo.audit("cli:alice", "tenant.create", "acme", {"limits": {"x": 1}})
    [entry] = await repo.audit_log()
    assert (entry.actor, entry.action, entry.target, entry.detail) == (
        "cli:alice",
        "tenant.create",
        "acme",
        {"limits": {"x": 1}},
    )


async def test_ledger_records_survive_a_restart_and_total_right(db_url: str) -> None:
    db = await open_database(db_url)
    ledger = SqlLedger(Repository(db), batch_size=7, interval_s=0.05)
    for i in range(20):
        ledger.record(usage(i, model="a" if i % 2 else "b"))
    for i in range(5):
        ledger.record(usage(i, tenant="other", at=T0 + DAY, inp=100, out=1, status=500))
    await ledger.close()
    await db.close()

    db = await open_database(db_url)  # a new gateway process
    try:
        report = await SqlLedger(Repository(db)).report(T0 - DAY)
        rows = {(r.tenant, r.model, r.day): r for r in report}
        assert set(rows) == {
            ("acme", "a", utc_day(T0)),
            ("acme", "b", utc_day(T0)),
            ("other", "m", utc_day(T0 + DAY)),
        }
        a = rows[("acme", "a", utc_day(T0))]
        assert (a.requests, a.errors, a.input_tokens, a.output_tokens) == (10, 0, 100, 50)
        other = rows[("other", "m", utc_day(T0 + DAY))]
        assert (other.requests, other.errors, other.input_tokens) == (5, 5, 500)
        only = await Repository(db).usage_totals(T0 - DAY, tenant="other")
        assert [r.tenant for r in only] == ["other"]
        assert await Repository(db).usage_totals(T0 + 2 * DAY) == []
    finally:
        await db.close()


async def test_duplicate_request_ids_count_once(repo: Repository) -> None:
    await repo.insert_usage([usage(1), usage(2)])
    await repo.insert_usage([usage(2), usage(3)])  # a retried batch that was half written
    [total] = await repo.usage_totals(0)
    assert total.requests == 3


async def test_a_failing_database_loses_nothing(tmp_path: object, caplog: pytest.LogCaptureFixture) -> None:
    path = f"{tmp_path}/ledger.db"
    db = await open_database(f"sqlite:///{path}")
    ledger = SqlLedger(Repository(db), batch_size=3, interval_s=0.02, max_backoff_s=0.05)
    # Another process makes the table disappear: every write fails until it is back.
    other = sqlite3.connect(path)
    other.execute("ALTER TABLE usage RENAME TO usage_away")
    other.commit()
    with caplog.at_level(logging.WARNING):
        for i in range(10):
            ledger.record(usage(i))
        await ledger.flush()
        assert ledger.pending == 10
    assert "kept for retry" in caplog.text
    other.execute("ALTER TABLE usage_away RENAME TO usage")
    other.commit()
    other.close()
    deadline = time.monotonic() + 10
    # the background writer retries by itself
    while ledger.pending and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert ledger.pending == 0
    await ledger.close()
    [total] = await Repository(db).usage_totals(0)
    assert total.requests == 10
    await db.close()


async def test_the_ledger_is_bounded(repo: Repository) -> None:
    ledger = SqlLedger(repo, max_pending=5)
    for i in range(8):
        ledger.record(usage(i))  # no event loop task yet writes; the queue keeps the newest five
    assert ledger.pending == 5 and ledger.dropped == 3
    await ledger.close()
    [total] = await repo.usage_totals(0)
    assert total.requests == 5


async def test_spend_rebuilt_from_the_ledger_after_a_restart(repo: Repository) -> None:
    now = day_start(T0) + 3600 * 5
    ledger = SqlLedger(repo)
    ledger.record(usage(1, at=now - 60, inp=300, out=100))  # today
    ledger.record(usage(2, at=now - DAY, inp=1000, out=0))  # earlier this month
    ledger.record(usage(3, subject="k2", at=now - 120, inp=50, out=50))
    await ledger.close()
    assert sorted((s.subject, s.tokens) for s in await repo.spend_since(day_start(now))) == [
        ("k1", 400),
        ("k2", 100),
    ]

    store = MemoryQuotaStore(clock=lambda: now)  # the restarted gateway
    await seed_from_ledger(store, repo, now)
    assert await store.spent("acme", f"t:d:{day_name(now)}") == 500
    assert (
        await store.spent(
            "acme",
            f"s:k1:m:{month_name(now)}",
        )
        == 1400
    )
    caller = Principal("acme", "k1", Limits(tokens_per_day=600))
    assert isinstance(await store.admit(caller, 100), Admission)
    assert isinstance(await store.admit(caller, 1), Rejection)


async def test_unsupported_url_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match="unsupported database URL 'mysql://u:\\*\\*\\*@h/db'"):
        await open_database("mysql://u:secret@h/db")
