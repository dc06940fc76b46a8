"""The usage journal (journal.py) and the ledger around it (ledger.py): records on disk before the
answer, replayed after a crash, a refused record quarantined while the rest are written."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest

from respublica.serving.gateway.contracts import UsageRecord
from respublica.serving.gateway.db import Repository, open_database
from respublica.serving.gateway.journal import QUARANTINE, UsageJournal, read_segment
from respublica.serving.gateway.ledger import SqlLedger


def usage(i: int, tenant: str = "acme") -> UsageRecord:
    return UsageRecord(
        request_id=f"r{i}",
        started_at=time.time(),
        tenant=tenant,
        subject="k1",
        model="m",
        endpoint="http://e",
        input_tokens=3,
        output_tokens=5,
        latency_ms=1.0,
        ttft_ms=None,
        status=200,
    )


async def rows(db_path: Path) -> list[str]:
    db = await open_database(f"sqlite:///{db_path}")
    try:
        return sorted(str(r["request_id"]) for r in await db.fetch("SELECT request_id FROM usage"))
    finally:
        await db.close()


def crash(journal: UsageJournal) -> None:
    """What SIGKILL leaves: the files as they are, the locks released with the descriptors."""
    for segment in list(journal._segments.values()):
        os.close(segment.fd)
    journal._segments.clear()


async def test_records_are_on_disk_before_durable_returns_and_gone_once_written(tmp_path: Path) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'l.db'}")
    journal = UsageJournal(tmp_path / "j", segment_records=4)
    ledger = SqlLedger(Repository(db), journal=journal, interval_s=3600)
    for i in range(10):
        ledger.record(usage(i))
    await ledger.durable()
    on_disk = [r.request_id for p in sorted((tmp_path / "j").glob("*.jsonl")) for r in read_segment(p)]
    assert sorted(on_disk) == sorted(f"r{i}" for i in range(10))
    await ledger.flush()
    assert journal.segments == 1  # the two full segments are deleted once the database has them
    await ledger.close()
    assert list((tmp_path / "j").glob("*.jsonl")) == []
    await db.close()


async def test_a_dead_process_records_are_replayed_once(tmp_path: Path) -> None:
    db_path = tmp_path / "l.db"
    db = await open_database(f"sqlite:///{db_path}")
    dead = SqlLedger(Repository(db), journal=UsageJournal(tmp_path / "j"), interval_s=3600)
    for i in range(20):
        dead.record(usage(i))
    await dead.durable()
    await dead.repo.insert_usage([usage(0), usage(1)])  # some reached the database before the crash
    assert dead.journal is not None
    crash(dead.journal)
    live_journal = UsageJournal(tmp_path / "j")
    live = SqlLedger(Repository(db), journal=live_journal)
    live.record(usage(100))  # the live process's own segment is never replayed by itself
    await live.open()
    assert live.replayed == 20
    assert await rows(db_path) == sorted(f"r{i}" for i in range(20))
    await live.close()
    assert await rows(db_path) == sorted([*(f"r{i}" for i in range(20)), "r100"])
    await db.close()


async def test_a_refused_record_is_quarantined_and_the_rest_written(tmp_path: Path) -> None:
    db_path = tmp_path / "l.db"
    db = await open_database(f"sqlite:///{db_path}")
    # The database refuses one record (as it did a usage above 2^63): a trigger, in the real SQLite.
    refuse = sqlite3.connect(db_path)
    refuse.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON usage WHEN NEW.tenant = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    refuse.commit()
    refuse.close()
    journal = UsageJournal(tmp_path / "j")
    ledger = SqlLedger(Repository(db), journal=journal, batch_size=10, interval_s=0.01)
    for i in range(30):
        ledger.record(usage(i, tenant="poison" if i == 3 else "acme"))
    deadline = time.monotonic() + 10
    while ledger.pending and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert ledger.pending == 0 and ledger.quarantined == 1
    assert len(await rows(db_path)) == 29
    assert [r.request_id for r in read_segment(tmp_path / "j" / QUARANTINE)] == ["r3"]
    await ledger.close()
    await db.close()


async def test_one_fsync_covers_a_wave_of_concurrent_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: 200 requests awaiting durable() at once share one or two fdatasync calls, never
    one each (the cost per request is measured, not asserted, in benchmarks/journal.py)."""
    db = await open_database(f"sqlite:///{tmp_path / 'l.db'}")
    ledger = SqlLedger(
        Repository(db), journal=UsageJournal(tmp_path / "j"), interval_s=3600, max_pending=10**6
    )
    syncs: list[int] = []
    real = os.fdatasync

    def counted(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)

    async def one(i: int) -> None:
        ledger.record(usage(i))
        await ledger.durable()

    for wave in range(10):
        before = len(syncs)
        await asyncio.gather(*(one(wave * 200 + i) for i in range(200)))
        assert 1 <= len(syncs) - before <= 2, f"wave {wave}: {len(syncs) - before} fsyncs for 200 requests"
    on_disk = [r.request_id for p in (tmp_path / "j").glob("*.jsonl") for r in read_segment(p)]
    assert len(on_disk) == 2000
    ledger._queue.clear()
    await db.close()


async def test_the_writer_ends_on_a_cancel_that_lands_just_after_its_wake(tmp_path: Path) -> None:
    """A cancel that arrives after the writer's wake-up but before it resumes must end it (with
    `asyncio.wait_for` on Python 3.11 it was swallowed and the writer waited on: `close()` hung)."""
    db = await open_database(f"sqlite:///{tmp_path / 'l.db'}")
    try:
        for turns in range(4):  # where exactly the cancel lands depends on the loop's turns
            ledger = SqlLedger(Repository(db), interval_s=3600)
            ledger.record(usage(turns))  # starts the writer, which then waits to be woken
            for _ in range(3):
                await asyncio.sleep(0)
            await ledger.flush()
            task = ledger._task
            assert task is not None and ledger._wake is not None
            ledger._wake.set()
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5)
            assert task in done and task.cancelled(), f"the writer outlived its cancel ({turns} turns)"
    finally:
        await db.close()
