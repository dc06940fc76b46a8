"""The database interface and the URL that picks its implementation."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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


# Where every part of respublica (gateway, `respublica tenants/keys/usage`, `respublica up`)
# finds the database, first match wins: RESPUBLICA_DB, then the gateway setting's own variable.
DATABASE_ENV = ("RESPUBLICA_DB", "RESPUBLICA_DATABASE_URL")


def default_database_url() -> str:
    """SQLite under $XDG_DATA_HOME (~/.local/share)."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{data_home}/respublica/gateway.db"


def database_url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return next((env[name] for name in DATABASE_ENV if env.get(name)), None)


def resolve_database_url(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """An explicit URL (a flag, a settings file), else the environment, else the default."""
    return explicit or database_url_from_env(environ) or default_database_url()


def describe_url(url: str) -> str:
    """The URL without its password (in the authority or as a `password` parameter), for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<database URL that can not be parsed>"
    netloc = parts.netloc
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        if ":" in creds:
            netloc = f"{creds.split(':', 1)[0]}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing to hide; urlunsplit would also drop sqlite:////'s empty authority
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


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
