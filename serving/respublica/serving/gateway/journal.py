"""The usage journal: every ledger record on local disk before its request's answer completes.

Why: the ledger writes to the database in batches (ledger.py), so a gateway killed with SIGKILL
(OOM, a node lost) loses up to a second of records, and with them charges the quota store rebuilds
from the ledger. The journal closes that gap the way a database's write-ahead log does:

- `append` writes one JSON line to the current segment file (one `write(2)`, no fsync: a few
  microseconds, and the line is in the kernel once it returns, so a process crash loses nothing).
- `sync` makes everything appended so far durable against a machine crash with one `fdatasync` in
  a worker thread, shared by every request waiting at that moment (group commit): under load one
  fsync covers hundreds of requests, and the event loop never blocks on the disk.
- `done` is told when the database has a segment's records; a segment whose records are all
  written is deleted (segments rotate every `segment_records` lines, so the files stay small).
- On start, `orphans` lists the segments of processes that are gone (no `flock` held on them),
  whose records are read back with `read_segment` and written to the database again. The insert is
  idempotent per request id, so a record written twice (the database had it, the segment was not
  deleted yet) counts once.

Each process writes its own segments (`<pid>-<random>-<n>.jsonl`) and holds an exclusive `flock`
on each until it is deleted, so several workers or replicas can share one directory and a restarted
process replays only what the dead one left. A torn last line (killed mid-write) is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from respublica.serving.gateway import jsoncodec
from respublica.serving.gateway.contracts import UsageRecord

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
QUARANTINE = "quarantine.jsonl"
_FIELDS = {f.name for f in dataclasses.fields(UsageRecord)}


def encode(record: UsageRecord) -> bytes:
    try:
        return jsoncodec.dumps(record) + b"\n"  # orjson writes a dataclass itself, in about 1 us
    except TypeError:  # no orjson (asdict costs ~20x more), or an integer beyond 64 bits
        return jsoncodec.dumps(dataclasses.asdict(record)) + b"\n"


def decode(line: bytes) -> UsageRecord | None:
    """A record from one journal line; None for a torn or foreign line."""
    try:
        doc: Any = jsoncodec.loads(line)
        if not isinstance(doc, dict):
            return None
        return UsageRecord(**{k: v for k, v in doc.items() if k in _FIELDS})
    except (ValueError, TypeError):
        return None


def read_segment(path: Path) -> list[UsageRecord]:
    records: list[UsageRecord] = []
    for line in path.read_bytes().splitlines():
        record = decode(line) if line else None
        if record is not None:
            records.append(record)
    return records


@dataclasses.dataclass
class _Segment:
    seq: int
    path: Path
    fd: int
    appended: int = 0
    outstanding: int = 0  # appended records the database does not have yet


class UsageJournal:
    def __init__(self, directory: Path, *, segment_records: int = 10_000) -> None:
        self.directory = directory
        self.segment_records = segment_records
        self._prefix = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        self._next_seq = 0
        self._appended = 0  # lines appended, all segments
        self._synced = 0  # lines known durable
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._syncer: asyncio.Task[None] | None = None
        self.failures = 0  # appends or syncs the disk refused (the record then lives in memory only)

    # -- writing ------------------------------------------------------------------------------
    def _open_segment(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"{self._prefix}-{seq}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours until deleted: no replay takes it
        segment = _Segment(seq, path, fd)
        self._segments[seq] = segment
        return segment

    def append(self, record: UsageRecord) -> int | None:
        """Write the record's line; the segment it is in (for `done`), or None if the disk failed."""
        try:
            segment = self._current
            if segment is None or segment.appended >= self.segment_records:
                if segment is not None:
                    os.fdatasync(segment.fd)  # every 10,000 records: what sync() covered stays covered
                    self._retire(segment)
                segment = self._current = self._open_segment()
            os.write(segment.fd, encode(record))
        except OSError as exc:
            self.failures += 1
            log.error("usage journal: writing a record failed (%s); it is held in memory only", exc.strerror)
            return None
        segment.appended += 1
        segment.outstanding += 1
        self._appended += 1
        return segment.seq

    async def sync(self) -> None:
        """Return once every line appended before the call is on disk (one fsync for many callers)."""
        waiter = self.sync_waiter()
        if waiter is not None:
            await waiter

    def sync_waiter(self) -> asyncio.Future[None] | None:
        """`sync` without its coroutine: a future done once every line appended so far is on disk,
        or None when they already are. The future is the caller's own, so a caller cancelled while
        it waits (which cancels the future) never cancels the others; the request path awaits it
        directly, without a task to shield it."""
        target = self._appended
        if self._synced >= target:
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append((target, waiter))
        if self._syncer is None:
            self._syncer = loop.create_task(self._sync_rounds(), name="usage-journal-sync")
        return waiter

    async def _sync_rounds(self) -> None:
        """fdatasync rounds while anyone waits; each round covers every line appended before it."""
        try:
            while self._waiters:
                upto = self._appended
                segment = self._current
                try:
                    if segment is not None:
                        await asyncio.to_thread(os.fdatasync, segment.fd)
                except OSError as exc:
                    self.failures += 1
                    log.error("usage journal: fsync failed (%s)", exc.strerror)
                self._synced = max(self._synced, upto)
                waiting, self._waiters = self._waiters, []
                for target, waiter in waiting:
                    if target > upto:
                        self._waiters.append((target, waiter))
                    elif not waiter.done():
                        waiter.set_result(None)
        finally:
            self._syncer = None
            for _, waiter in self._waiters:  # cancelled mid-round (shutdown): nobody waits forever
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters = []

    def done(self, seq: int, count: int = 1) -> None:
        """`count` records of segment `seq` are in the database."""
        segment = self._segments.get(seq)
        if segment is None:
            return
        segment.outstanding -= count
        if segment.outstanding <= 0 and segment is not self._current:
            self._delete(segment)

    def _retire(self, segment: _Segment) -> None:
        if segment.outstanding <= 0:
            self._delete(segment)

    def _delete(self, segment: _Segment) -> None:
        self._segments.pop(segment.seq, None)
        with contextlib.suppress(OSError):
            segment.path.unlink()
        with contextlib.suppress(OSError):
            os.close(segment.fd)

    @property
    def segments(self) -> int:
        return len(self._segments)

    # -- replay and quarantine ----------------------------------------------------------------
    def orphans(self) -> Iterator[tuple[Path, int]]:
        """Segments no live process holds: (path, a descriptor holding its lock; close it when done)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if path.name == QUARANTINE or path.name.startswith(self._prefix + "-"):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # replayed and deleted by another process just now
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # a live process's segment
                continue
            yield path, fd

    def quarantine(self, records: list[UsageRecord]) -> None:
        """Keep records the database refused, for an operator to look at (never retried)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with (self.directory / QUARANTINE).open("ab") as out:
                out.write(b"".join(encode(r) for r in records))
        except OSError as exc:
            log.error("usage journal: quarantining %d records failed (%s)", len(records), exc.strerror)

    def close(self) -> None:
        """Close the files; segments whose records are all written are deleted, the rest stay for replay."""
        for segment in list(self._segments.values()):
            if segment.outstanding <= 0:
                self._delete(segment)
            else:
                with contextlib.suppress(OSError):
                    os.fdatasync(segment.fd)
                    os.close(segment.fd)
                self._segments.pop(segment.seq, None)
        self._current = None
