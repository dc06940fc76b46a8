"""PostgreSQL through an asyncpg pool; the queries are the SQLite ones with `$n` placeholders."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from respublica.serving.gateway.db.base import DatabaseError, Dialect, Row, describe_url
from respublica.serving.gateway.db.schema import ADDED_COLUMNS, statements

_PLACEHOLDER = re.compile(r"\?")


def to_dollar(sql: str) -> str:
    """`?` placeholders as asyncpg's `$1, $2, ...` (the queries hold no literal question marks)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def _rowcount(status: str) -> int:
    # asyncpg returns the command tag: "UPDATE 3", "INSERT 0 1", "DELETE 0".
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresDatabase:
    dialect: Dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresDatabase:
        try:
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, timeout=10)
            # Several gateways may start at once; the lock keeps CREATE IF NOT EXISTS from racing.
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(7262817)")
                for statement in statements("postgresql"):
                    await conn.execute(statement)
                for table, column, kind in ADDED_COLUMNS:
                    await conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
        except (OSError, asyncpg.PostgresError) as exc:
            raise DatabaseError(f"can not open PostgreSQL database {describe_url(url)}: {exc}") from exc
        return cls(pool)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        try:
            status = await self._pool.execute(to_dollar(sql), *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseError(str(exc)) from exc
        return _rowcount(str(status))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.executemany(to_dollar(sql), [tuple(r) for r in rows])
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseError(str(exc)) from exc

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        try:
            records = await self._pool.fetch(to_dollar(sql), *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseError(str(exc)) from exc
        return [dict(r) for r in records]

    async def close(self) -> None:
        await self._pool.close()
