"""The database interface and the URL that picks its implementation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]
Row = dict[str, Any]


class DatabaseError(Exception):
    """The database could not be reached or refused a statement."""


class Database(Protocol):
    """SQL with `?` placeholders; each call is its own transaction."""

    dialect: Dialect

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each row, all in one transaction."""
        ...

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    async def close(self) -> None: ...


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


async def open_database(url: str) -> Database:
    """Connect and create the schema: `sqlite:///path` (relative, or `sqlite:////abs`) or `postgresql://...`."""
    if url.startswith("sqlite:///"):
        from respublica.serving.gateway.db.sqlite import SqliteDatabase

        return await SqliteDatabase.open(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from respublica.serving.gateway.db.postgres import PostgresDatabase

        return await PostgresDatabase.open(url)
    raise DatabaseError(
        f"unsupported database URL {describe_url(url)!r}: use sqlite:///path/to/file.db or postgresql://..."
    )
