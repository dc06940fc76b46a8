"""Fixtures of the policy tests: a settable clock, quota stores of both kinds, databases of both kinds."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from respublica.serving.gateway.db import Database, Repository, open_database
from respublica.serving.gateway.quota import MemoryQuotaStore, RedisQuotaStore

Store = MemoryQuotaStore | RedisQuotaStore


class Clock:
    """A clock tests move by hand; starts 10 s into a minute, mid-month, so nothing crosses by accident."""

    def __init__(self, start: float = 1_795_000_030.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def make_store(
    store_kind: str, request: pytest.FixtureRequest, clock: Clock
) -> AsyncIterator[Callable[..., Store]]:
    """Stores of this test's kind; Redis ones made by one test share a key prefix (one "cluster")."""
    made: list[Store] = []
    prefix = f"t{uuid.uuid4().hex[:8]}"
    redis_url = request.getfixturevalue("redis_url") if store_kind == "redis" else None

    def make(**kwargs: Any) -> Store:
        kwargs.setdefault("clock", clock)
        store: Store
        if redis_url is not None:
            store = RedisQuotaStore.from_url(redis_url, prefix=prefix, **kwargs)
        else:
            kwargs.pop("fail_policy", None)
            store = MemoryQuotaStore(**kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


# -- databases ---------------------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    # Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<version>/bin.
    root = Path("/usr/lib/postgresql")
    versions = sorted(root.glob("*/bin/initdb")) if root.exists() else []
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_isready") else None


def _unavailable(message: str) -> NoReturn:
    # In CI a missing server is a broken setup, not a reason to pass without testing PostgreSQL.
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on loopback (initdb + postgres), skipped where none is installed
    (failed in CI, `CI=true`).

    PostgreSQL refuses to run as root; as root the server runs as the `postgres` system user.
    """
    bindir = _pg_bin()
    if bindir is None:
        _unavailable("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    as_user: list[str] = []
    workdir = tempfile.mkdtemp(prefix="pg-")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            _unavailable("running as root without runuser: PostgreSQL can not be started")
        shutil.chown(workdir, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = f"{workdir}/data"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", data, "-A", "trust", "-U", "respublica", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            *as_user,
            str(bindir / "postgres"),
            "-D",
            data,
            "-k",
            workdir,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
                timeout=10,
            )
            if ready.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.1)
        yield f"postgresql://respublica@127.0.0.1:{port}/postgres"
    finally:
        server.terminate()  # runuser forwards SIGTERM: a "smart" shutdown of the server
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


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
    db: Database = await open_database(db_url)
    yield Repository(db)
    await db.close()
