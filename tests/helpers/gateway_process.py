"""What the tests that run the gateway as a real process share: a key in its database, its ledger
rows, and waiting until it answers /healthz (or saying why it died)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from respublica.serving.gateway.auth.keys import generate_key
from respublica.serving.gateway.db import Repository, open_database


async def create_key(db_url: str, tenant: str, name: str = "test") -> str:
    """A new API key of `tenant`, written to the gateway's database; the whole key (shown once)."""
    db = await open_database(db_url)
    try:
        new = generate_key()
        await Repository(db).create_key(new.key_id, tenant, new.secret_hash, name=name)
        return new.key
    finally:
        await db.close()


async def usage_rows(db_url: str, tenant: str) -> list[dict[str, Any]]:
    """The ledger's rows of `tenant`."""
    db = await open_database(db_url)
    try:
        return await db.fetch("SELECT * FROM usage WHERE tenant = ?", (tenant,))
    finally:
        await db.close()


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, within_s: float = 60.0) -> None:
    """Return once `url` answers /healthz; fail with the log's tail if the process exits or times out."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"gateway not healthy in {within_s}s: {log.read_text()[-3000:]}")
