"""The gateway `respublica up` puts in front of its engine: routes, a first key, an admin key."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from respublica.serving.engine.gateway_local import (
    DEFAULT_TENANT,
    LocalGateway,
    RouteEntry,
    first_tenant,
    routes_document,
)
from respublica.serving.engine.up import free_port


def _get(url: str, token: str | None = None) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_routes_point_every_model_at_the_engine() -> None:
    entries = [RouteEntry("a", ("*",)), RouteEntry("b", ("research",), ("sql",), task="embed")]
    document = routes_document(entries, "http://127.0.0.1:9000")
    assert document == {
        "models": [
            {"name": "a", "endpoints": ["http://127.0.0.1:9000"], "tenants": ["*"], "task": "generate"},
            {
                "name": "b",
                "endpoints": ["http://127.0.0.1:9000"],
                "tenants": ["research"],
                "task": "embed",
                "adapters": ["sql"],
            },
        ]
    }
    # the gateway reads what `up` writes, task included
    from respublica.serving.gateway.routing.file_source import parse_routes

    table = parse_routes(document)
    assert table.routes["a"].task == "generate" and table.routes["b"].task == "embed"
    assert first_tenant(entries) == "research"
    assert first_tenant(entries[:1]) == DEFAULT_TENANT


def test_gateway_serves_keys_admin_and_revokes_on_stop(tmp_path: Path, private_cache: Path) -> None:
    from respublica.serving.gateway.db import Repository, open_database
    from respublica.serving.gateway.routing.file_source import load_routes_file

    routes = tmp_path / "routes.yaml"
    routes.write_text(yaml.safe_dump(routes_document([RouteEntry("tiny", ("*",))], "http://127.0.0.1:9")))
    load_routes_file(routes)  # the gateway's own parser accepts it
    url = f"sqlite:///{tmp_path / 'data' / 'gateway.db'}"
    gateway = LocalGateway(port=free_port(), routes_file=routes, database_url=url, tenant="local")
    gateway.start()
    try:
        issued = gateway.issued
        assert issued is not None and issued.tenant == "local" and issued.key.startswith("rp_")
        status, body = _get(f"{gateway.base_url}/v1/models", issued.key)
        assert status == 200 and [m["id"] for m in body["data"]] == ["tiny"]  # type: ignore[index]
        assert _get(f"{gateway.base_url}/v1/models")[0] == 401
        assert _get(f"{gateway.base_url}/v1/models", "rp_0000000000000000_" + "x" * 43)[0] == 401
        status, _ = _get(f"{gateway.base_url}/admin/tenants", gateway.admin_key)
        assert status == 200
        assert _get(f"{gateway.base_url}/admin/tenants", issued.key)[0] in (401, 403)
        # Loopback only, so /metrics is served beside the API (and says nothing on stderr about it).
        with urllib.request.urlopen(f"{gateway.base_url}/metrics", timeout=10) as response:
            assert response.status == 200 and b"respublica_gateway_" in response.read()
    finally:
        gateway.stop()
    assert not gateway.alive()

    async def key_state() -> float | None:
        db = await open_database(url)
        try:
            row = await Repository(db).get_key(issued.key_id)
            assert row is not None
            return row.revoked_at
        finally:
            await db.close()

    assert asyncio.run(key_state()) is not None
    # a second run reuses the tenant and gets a new key
    again = LocalGateway(port=free_port(), routes_file=routes, database_url=url, tenant="local")
    again.start()
    try:
        assert again.issued is not None and again.issued.key_id != issued.key_id
    finally:
        again.stop()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
