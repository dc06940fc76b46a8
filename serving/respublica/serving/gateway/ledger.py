"""The usage ledger: one record per request, written to the database in batches.

`record()` appends the record to the usage journal (journal.py: a local file, one `write(2)`) and
to an in-memory queue; it never blocks a request. `durable()` returns once the journal has it on
disk (group fsync); the request path awaits it before the answer completes, so no request answered
200 loses its record to a crash of the process. A background task writes a batch when `batch_size`
records wait or every `interval_s`, and tells the journal which records the database has. On start
(`open()`), records that a dead process left in the journal are written to the database first.

A failed batch is written again record by record: if the database takes some, the records it
refuses are poison (a value it can not store, a constraint) and are quarantined (kept in the
journal directory's `quarantine.jsonl`, counted in `quarantined`), never blocking the others. If it
takes none, it is down: the batch goes back to the head of the queue and is retried with backoff.
The insert is idempotent per request id, so a retried or replayed record never counts twice. The
queue is bounded (`max_pending`): past it the oldest records are dropped from memory and counted in
`dropped`, with an error logged (they stay in the journal and are written on the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque

from respublica.serving.gateway.contracts import UsageRecord
from respublica.serving.gateway.db.repo import Repository, SpendTotal, UsageTotal
from respublica.serving.gateway.journal import UsageJournal, read_segment

log = logging.getLogger(__name__)


class SqlLedger:
    def __init__(
        self,
        repo: Repository,
        *,
        batch_size: int = 500,
        interval_s: float = 1.0,
        max_pending: int = 200_000,
        max_backoff_s: float = 30.0,
        close_timeout_s: float = 10.0,
        journal: UsageJournal | None = None,
    ) -> None:
        self.repo = repo
        self.journal = journal
        self.quarantined = 0
        self.replayed = 0
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.max_backoff_s = max_backoff_s
        self.close_timeout_s = close_timeout_s
        self.dropped = 0
        # (record, its journal segment or None): the segment is told once the database has it.
        self._queue: deque[tuple[UsageRecord, int | None]] = deque()
        self._write_lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_error_log = 0.0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def record(self, record: UsageRecord) -> None:
        seq = self.journal.append(record) if self.journal is not None else None
        if len(self._queue) >= self.max_pending:
            self._queue.popleft()
            self.dropped += 1
            self._log_error("usage ledger full: dropping the oldest records (%d so far)", self.dropped)
        self._queue.append((record, seq))
        if self._closed:
            return
        self._start()
        if len(self._queue) >= self.batch_size and self._wake is not None:
            self._wake.set()

    async def durable(self) -> None:
        """Return once every record so far is on local disk (a no-op without a journal)."""
        waiter = self.durable_waiter()
        if waiter is not None:
            await waiter

    def durable_waiter(self) -> asyncio.Future[None] | None:
        """`durable` as the caller's own future (None: on disk already, or no journal); see
        `UsageJournal.sync_waiter`."""
        return self.journal.sync_waiter() if self.journal is not None else None

    async def open(self) -> None:
        """Write to the database what dead processes left in the journal (call at start, before
        the quota store is seeded from the ledger). A database that fails leaves them for the next start."""
        if self.journal is None:
            return
        for path, fd in self.journal.orphans():
            try:
                records = await asyncio.to_thread(read_segment, path)
                if await self._insert(records):
                    path.unlink(missing_ok=True)
                    self.replayed += len(records)
                    log.info("usage ledger: %d records replayed from %s", len(records), path.name)
                else:
                    log.error("usage ledger: replaying %s failed; kept for the next start", path.name)
            finally:
                os.close(fd)

    def _start(self) -> None:
        if self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the records wait for flush() or the first record() inside one
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="usage-ledger")

    def _lock(self) -> asyncio.Lock:
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    def _log_error(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.error(message, *args)

    async def _write_pending(self) -> bool:
        """Write everything queued; False (records kept) when the database fails."""
        async with self._lock():
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
                if not await self._insert([record for record, _ in batch]):
                    self._queue.extendleft(reversed(batch))
                    return False
                if self.journal is not None:
                    for _, seq in batch:
                        if seq is not None:
                            self.journal.done(seq)
        return True

    async def _insert(self, records: list[UsageRecord]) -> bool:
        """Insert; on failure one by one, quarantining what the database refuses while it takes
        the rest. False (nothing quarantined) when it takes none: it is down, not the records."""
        try:
            await self.repo.insert_usage(records)
            return True
        except Exception as exc:  # whatever the driver raises, the records must survive
            error = type(exc).__name__
        refused: list[UsageRecord] = []
        for record in records:
            try:
                await self.repo.insert_usage([record])
            except Exception:
                refused.append(record)
        if len(refused) == len(records):
            log.warning(
                "usage ledger: writing %d records failed (%s); kept for retry, %d pending",
                len(records),
                error,
                len(self._queue) + len(records),
            )
            return False
        if refused:
            self.quarantined += len(refused)
            log.error(
                "usage ledger: the database refused %d records (request ids %s); quarantined",
                len(refused),
                ", ".join(r.request_id for r in refused[:5]),
            )
            if self.journal is not None:
                self.journal.quarantine(refused)
        return True

    async def _run(self) -> None:
        assert self._wake is not None
        backoff = self.interval_s
        while True:
            # `asyncio.timeout`, not `wait_for`: on Python 3.11, a cancel that lands after the wake
            # but before this task resumes is swallowed by `wait_for`, and the writer then waited
            # on, so `close()` (and a test's event loop teardown) hung on it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            self._wake.clear()
            if await self._write_pending():
                backoff = self.interval_s
            else:
                backoff = min(self.max_backoff_s, max(backoff * 2, 0.1))

    async def flush(self) -> None:
        """Write what is queued now; on a database error the records stay queued for the retry."""
        self._start()
        await self._write_pending()

    async def close(self) -> None:
        """Stop the writer and flush, retrying until `close_timeout_s`; what is left is logged as lost."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        deadline = time.monotonic() + self.close_timeout_s
        delay = 0.1
        while not await self._write_pending():
            if time.monotonic() + delay > deadline:
                where = "; they stay in the journal" if self.journal is not None else ""
                log.error(
                    "usage ledger: %d records could not be written before shutdown%s", len(self._queue), where
                )
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        if self.journal is not None:
            self.journal.close()

    # -- reading ------------------------------------------------------------------------------
    async def report(
        self, since: float, *, tenant: str | None = None, until: float | None = None
    ) -> list[UsageTotal]:
        """Totals by tenant, model and UTC day since `since` (what is still queued is flushed first)."""
        await self.flush()
        return await self.repo.usage_totals(since, tenant=tenant, until=until)

    async def spend_since(self, since: float) -> list[SpendTotal]:
        await self.flush()
        return await self.repo.spend_since(since)
