"""The usage ledger: one record per request, written to the database in batches.

`record()` only appends to an in-memory queue (it never blocks a request). A background task
writes a batch when `batch_size` records wait or every `interval_s`. A failed write puts the
batch back at the head of the queue and is retried with backoff; the insert is idempotent per
request id, so a retried batch never counts twice. The queue is bounded (`max_pending`): past it
the oldest records are dropped and counted in `dropped`, with an error logged — memory is
finite, and a database down for that long is an outage someone must see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from respublica.serving.gateway.contracts import UsageRecord
from respublica.serving.gateway.db.repo import Repository, SpendTotal, UsageTotal

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
    ) -> None:
        self.repo = repo
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.max_backoff_s = max_backoff_s
        self.close_timeout_s = close_timeout_s
        self.dropped = 0
        self._queue: deque[UsageRecord] = deque()
        self._write_lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_error_log = 0.0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def record(self, record: UsageRecord) -> None:
        if len(self._queue) >= self.max_pending:
            self._queue.popleft()
            self.dropped += 1
            self._log_error("usage ledger full: dropping the oldest records (%d so far)", self.dropped)
        self._queue.append(record)
        if self._closed:
            return
        self._start()
        if len(self._queue) >= self.batch_size and self._wake is not None:
            self._wake.set()

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
                try:
                    await self.repo.insert_usage(batch)
                except Exception as exc:  # whatever the driver raises, the records must survive
                    self._queue.extendleft(reversed(batch))
                    log.warning(
                        "usage ledger: writing %d records failed (%s); kept for retry, %d pending",
                        len(batch),
                        type(exc).__name__,
                        len(self._queue),
                    )
                    return False
        return True

    async def _run(self) -> None:
        assert self._wake is not None
        backoff = self.interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
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
                log.error("usage ledger: %d records could not be written before shutdown", len(self._queue))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

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
