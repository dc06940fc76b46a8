"""A throwaway PostgreSQL cluster on loopback (Debian's server binaries, initdb + postgres)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest


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


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
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
