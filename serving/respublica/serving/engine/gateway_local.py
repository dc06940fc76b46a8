"""The gateway in front of `respublica up`'s engine: same process, its own thread, 127.0.0.1 only.

`up` writes a routes file pointing every served model at the local Serve endpoint, makes sure a
tenant exists in the gateway's database (the one `respublica tenants/keys/usage` use by default),
creates a key for it and an admin credential, and runs the gateway with them. The key is shown once
and revoked when `up` stops; lasting keys come from `respublica keys create`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from respublica.api.models import EngineSpec
from respublica.serving.engine.local import LOOPBACK

DEFAULT_TENANT = "local"
KEY_NAME = "respublica up (revoked when it stops)"


class GatewayError(Exception):
    """The gateway could not start; the message says why."""


@dataclass(frozen=True)
class RouteEntry:
    served_name: str
    tenants: tuple[str, ...]
    adapters: tuple[str, ...] = ()
    task: str = "generate"  # spec.model.task: the gateway answers the other kind of request itself
    # The engine's context length: the gateway's default cap on generated tokens never exceeds what
    # is left of it after the prompt (routes/plan.py). None: unknown, the configured default applies.
    max_model_len: int | None = None


def context_length(engine: EngineSpec, model_path: Path | None = None) -> int | None:
    """The context length the engine runs with, as vLLM decides it.

    vLLM (`vllm/config/model.py`, `ModelConfig` via `_get_and_verify_max_len`) takes
    `--max-model-len` when given (the spec's `engine.maxModelLen`; `extraArgs` may not set it),
    else the model's own `max_position_embeddings` from its `config.json`. Unreadable: None, unknown.
    """
    if engine.max_model_len is not None:
        return engine.max_model_len
    if model_path is None:
        return None
    try:
        config = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    found = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return found if isinstance(found, int) and not isinstance(found, bool) and found >= 1 else None


def routes_document(entries: Sequence[RouteEntry], engine_url: str) -> dict[str, Any]:
    """The gateway's routes file (local mode): every model served by the one local Serve endpoint."""
    models: list[dict[str, Any]] = []
    for entry in entries:
        model: dict[str, Any] = {
            "name": entry.served_name,
            "endpoints": [engine_url],
            "tenants": list(entry.tenants),
            "task": entry.task,
        }
        if entry.adapters:
            model["adapters"] = list(entry.adapters)
        if entry.max_model_len is not None:
            model["max_model_len"] = entry.max_model_len
        models.append(model)
    return {"models": models}


def first_tenant(entries: Sequence[RouteEntry]) -> str:
    """The tenant the first key is for: one every listed model admits when "*" is allowed."""
    for entry in entries:
        if "*" not in entry.tenants and entry.tenants:
            return entry.tenants[0]
    return DEFAULT_TENANT


def new_admin_key() -> str:
    return "rpadmin_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    key: str
    tenant: str


async def _issue_key(database_url: str, tenant: str) -> IssuedKey:
    from respublica.serving.gateway.auth.keys import generate_key
    from respublica.serving.gateway.contracts import Limits
    from respublica.serving.gateway.db import Repository, open_database

    db = await open_database(database_url)
    try:
        repo = Repository(db)
        if await repo.create_tenant(tenant, Limits()):
            await repo.audit("respublica up", "tenant.create", tenant, {"limits": "unlimited"})
        new = generate_key()
        await repo.create_key(new.key_id, tenant, new.secret_hash, name=KEY_NAME)
        await repo.audit("respublica up", "key.create", new.key_id, {"tenant": tenant, "name": KEY_NAME})
        return IssuedKey(new.key_id, new.key, tenant)
    finally:
        await db.close()


async def _revoke_key(database_url: str, key_id: str) -> None:
    from respublica.serving.gateway.db import Repository, open_database

    db = await open_database(database_url)
    try:
        repo = Repository(db)
        if await repo.revoke_key(key_id):
            await repo.audit("respublica up", "key.revoke", key_id, {"reason": "respublica up stopped"})
    finally:
        await db.close()


def database_url() -> str:
    """The database `respublica tenants/keys/usage` and the gateway use by default, so they see `up`'s
    tenant and usage."""
    from respublica.serving.gateway.db.base import resolve_database_url

    return resolve_database_url()


class LocalGateway:
    """The gateway app served by uvicorn in a background thread."""

    def __init__(self, *, port: int, routes_file: Path, database_url: str, tenant: str) -> None:
        self.port = port
        self.routes_file = routes_file
        self.database_url = database_url
        self.tenant = tenant
        self.admin_key = new_admin_key()
        self.issued: IssuedKey | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        import uvicorn

        from respublica.serving.gateway.db.base import describe_url
        from respublica.serving.gateway.settings import GatewaySettings
        from respublica.serving.gateway.wiring import build_from_settings

        if self.database_url.startswith("sqlite:///"):
            Path(self.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.issued = asyncio.run(_issue_key(self.database_url, self.tenant))
        except Exception as err:
            raise GatewayError(
                f"could not prepare the gateway's database {describe_url(self.database_url)}: {err}"
            ) from None
        settings = GatewaySettings.model_validate(
            {
                "host": LOOPBACK,
                "port": self.port,
                "routes_file": str(self.routes_file),
                "database_url": self.database_url,
                "admin_key": self.admin_key,
                # Bound to 127.0.0.1 only: /metrics beside the API is for this machine's user alone.
                "telemetry": {"public_metrics": True},
            }
        )
        app = build_from_settings(settings)
        config = uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)

        def serve() -> None:
            try:
                self._server.run()
            except BaseException as err:  # reported by start() or alive()
                self._error = err

        self._thread = threading.Thread(target=serve, name="gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise GatewayError(f"the gateway stopped while starting: {self._error or 'see above'}")
            if time.monotonic() > deadline:
                raise GatewayError(f"the gateway did not start within {timeout_s:.0f}s")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
        self._server = None
        self._thread = None
        if self.issued is not None:
            # On failure the key stays valid and listed; `respublica keys revoke` ends it.
            with contextlib.suppress(Exception):
                asyncio.run(_revoke_key(self.database_url, self.issued.key_id))
            self.issued = None
