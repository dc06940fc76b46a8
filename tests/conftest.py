"""Fixtures every test folder may use: real servers on loopback (Redis, PostgreSQL), databases of
both kinds, a kmock Kubernetes API, the operator as a process, a settable clock.

`redis_url` is one server for the whole session (no persistence); tests share it, so each one
uses keys of its own (a unique prefix). `spawn_redis` starts private servers that a test may
kill. The helpers behind these fixtures are in tests/helpers/.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import kmock
import pytest

from helpers.clock import Clock
from helpers.kmock_api import OperatorProcess, declare
from helpers.postgres_server import running_postgres
from helpers.redis_server import RedisServer, start_redis
from respublica.serving.gateway.db import Database, Repository, open_database


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    server = start_redis()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def spawn_redis() -> Iterator[Callable[[], RedisServer]]:
    """Start private redis-servers (for tests that kill one); all stopped at the end of the test."""
    servers: list[RedisServer] = []

    def spawn() -> RedisServer:
        servers.append(start_redis())
        return servers[-1]

    yield spawn
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL on loopback, skipped where none is installed (failed in CI, `CI=true`).

    PostgreSQL refuses to run as root; as root the server runs as the `postgres` system user.
    """
    with running_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each kind; PostgreSQL gets a schema-free new database per test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    base: str = request.getfixturevalue("postgres_url")
    name = f"t{uuid.uuid4().hex[:12]}"
    import asyncio

    import asyncpg  # type: ignore[import-untyped]

    async def create() -> None:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return base.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
async def repo(db_url: str) -> AsyncIterator[Repository]:
    """A gateway database repository on a fresh database of each kind."""
    db: Database = await open_database(db_url)
    yield Repository(db)
    await db.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def k8s(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    """kmock with every resource the operator and the gateway use declared for discovery."""
    declare(kmock)
    return kmock


@pytest.fixture
def operator_process(k8s: kmock.KubernetesEmulator, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(str(k8s.url), str(tmp_path / "operator.log"))
    try:
        yield proc
    finally:
        proc.stop()
