"""SQLite through aiosqlite: one connection, WAL so readers never wait for the writer."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from respublica.serving.gateway.db.base import DatabaseError, Dialect, Row
from respublica.serving.gateway.db.schema import ADDED_COLUMNS, statements


def _prepare(path: str) -> str:
    full = Path(path).expanduser()
    try:
        full.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(f"can not create the directory of {path}: {exc.strerror}") from exc
    return str(full)


class SqliteDatabase:
    dialect: Dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        # aiosqlite runs calls one at a time, but a statement and its commit are two calls.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> SqliteDatabase:
        if path != ":memory:":
            path = await asyncio.to_thread(_prepare, path)
        try:
            conn = await aiosqlite.connect(path, timeout=10.0)
            conn.row_factory = sqlite3.Row
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA busy_timeout=10000")
            for statement in statements("sqlite"):
                await conn.execute(statement)
            for table, column, kind in ADDED_COLUMNS:
                async with conn.execute(f"PRAGMA table_info({table})") as cursor:
                    present = {row[1] for row in await cursor.fetchall()}
                if column not in present:
                    await conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            await conn.commit()
        except sqlite3.Error as exc:
            raise DatabaseError(f"can not open SQLite database {path}: {exc}") from exc
        return cls(conn)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        async with self._lock:
            try:
                cursor = await self._conn.execute(sql, tuple(args))
                await self._conn.commit()
            except sqlite3.Error as exc:
                await self._rollback()
                raise DatabaseError(str(exc)) from exc
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._lock:
            try:
                await self._conn.executemany(sql, [tuple(r) for r in rows])
                await self._conn.commit()
            except sqlite3.Error as exc:
                await self._rollback()
                raise DatabaseError(str(exc)) from exc

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._lock:
            try:
                async with self._conn.execute(sql, tuple(args)) as cursor:
                    rows = await cursor.fetchall()
            except sqlite3.Error as exc:
                raise DatabaseError(str(exc)) from exc
        return [dict(r) for r in rows]

    async def _rollback(self) -> None:
        # If the rollback fails too the connection is unusable; the original error is what matters.
        with contextlib.suppress(sqlite3.Error):
            await self._conn.rollback()

    async def close(self) -> None:
        await self._conn.close()
