"""What the usage journal adds per request (issue 11's durability promise, measured, not asserted).

    .venv/bin/python benchmarks/journal.py [--waves 10] [--concurrency 200] [--rounds 3]

Each request does what the gateway does after an answer: `ledger.record()` then `await
ledger.durable()`, `--concurrency` of them at once (group fsync). The same SQLite ledger with and
without the journal, alternated `--rounds` times, best of each (the machine is shared). Prints CPU
microseconds per request and the fdatasync calls per wave.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from respublica.serving.gateway.contracts import UsageRecord
from respublica.serving.gateway.db import Repository, open_database
from respublica.serving.gateway.journal import UsageJournal
from respublica.serving.gateway.ledger import SqlLedger


def usage(i: int) -> UsageRecord:
    return UsageRecord(
        request_id=f"r{i}",
        started_at=time.time(),
        tenant="acme",
        subject="k1",
        model="m",
        endpoint="http://e",
        input_tokens=3,
        output_tokens=5,
        latency_ms=1.0,
        ttft_ms=None,
        status=200,
    )


async def cpu_us_per_request(ledger: SqlLedger, waves: int, concurrency: int, first: int) -> float:
    async def one(i: int) -> None:
        ledger.record(usage(i))
        await ledger.durable()

    started = time.process_time()
    for wave in range(waves):
        await asyncio.gather(*(one(first + wave * concurrency + i) for i in range(concurrency)))
    spent = time.process_time() - started
    ledger._queue.clear()  # the database writer is not what is measured here
    return spent / (waves * concurrency) * 1e6


async def main(waves: int, concurrency: int, rounds: int) -> None:
    syncs = 0
    real = os.fdatasync

    def counted(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        real(fd)

    os.fdatasync = counted  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_database(f"sqlite:///{Path(tmp) / 'l.db'}")
        plain_ledger = SqlLedger(Repository(db), interval_s=3600, max_pending=10**6)
        journal_ledger = SqlLedger(
            Repository(db), journal=UsageJournal(Path(tmp) / "j"), interval_s=3600, max_pending=10**6
        )
        plains, journals = [], []
        n = 0
        for _ in range(rounds):
            plains.append(await cpu_us_per_request(plain_ledger, waves, concurrency, n))
            n += waves * concurrency
            before = syncs
            journals.append(await cpu_us_per_request(journal_ledger, waves, concurrency, n))
            n += waves * concurrency
            per_wave = (syncs - before) / waves
        await plain_ledger.close()
        await journal_ledger.close()
        await db.close()
    plain, journal = min(plains), min(journals)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("| ledger | CPU us / request (best of rounds) |")
    print("|---|---:|")
    print(f"| SQLite ledger, no journal | {plain:.1f} |")
    print(f"| SQLite ledger + journal | {journal:.1f} |")
    print(f"| added by the journal | {journal - plain:.1f} |")
    print(f"fdatasync calls per wave of {concurrency}: {per_wave:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.waves, args.concurrency, args.rounds))
