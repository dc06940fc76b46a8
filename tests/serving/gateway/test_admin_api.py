"""The admin API over HTTP (httpx against the ASGI app): credential, CRUD, one-time keys, audit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from respublica.serving.gateway.admin import admin_router
from respublica.serving.gateway.auth import ApiKeyAuthenticator, GatewayAuthenticator, TenantDirectory
from respublica.serving.gateway.contracts import AuthError, Limits, UsageRecord
from respublica.serving.gateway.db import Repository, open_database
from respublica.serving.gateway.ledger import SqlLedger
from respublica.serving.gateway.routing.table import Route, RouteHolder, RouteTable
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics

ADMIN = "admin-key-0123456789abcdef"
HEADERS = {"authorization": f"Bearer {ADMIN}"}


class Env:
    def __init__(self, repo: Repository, client: httpx.AsyncClient, auth: GatewayAuthenticator) -> None:
        self.repo, self.client, self.auth = repo, client, auth


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    db = await open_database(f"sqlite:///{tmp_path}/admin.db")
    repo = Repository(db)
    directory = TenantDirectory(repo, {"gitops": Limits(max_concurrent=1)}, ttl_s=60)
    keys = ApiKeyAuthenticator(repo, directory, ttl_s=60)  # long TTL: this process's changes bypass it
    app = FastAPI()
    app.include_router(admin_router(repo, ADMIN, tenants=directory, keys=keys))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=HEADERS) as client:
        yield Env(repo, client, GatewayAuthenticator(keys))
    await db.close()


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    error: dict[str, object] = body["error"]
    return error


async def test_the_admin_credential(env: Env) -> None:
    for headers in ({"authorization": ""}, {"authorization": "Bearer wrong-key-but-long-enough"}):
        response = await env.client.get("/admin/tenants", headers=headers)
        error = error_of(
            response, 401, "missing_admin_key" if headers["authorization"] == "" else "invalid_admin_key"
        )
        assert error["type"] == "authentication_error"
    response = await env.client.post(
        "/admin/tenants", json={"name": "x"}, headers={"authorization": "Bearer nope"}
    )
    assert response.status_code == 401
    assert await env.repo.get_tenant("x") is None


def test_a_short_admin_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        admin_router(None, "short")  # type: ignore[arg-type]


async def test_tenants_crud(env: Env) -> None:
    c = env.client
    created = await c.post("/admin/tenants", json={"name": "acme", "limits": {"tokensPerDay": 1000}})
    assert created.status_code == 201
    assert created.json()["limits"]["tokensPerDay"] == 1000
    error_of(await c.post("/admin/tenants", json={"name": "acme"}), 409, "tenant_exists")
    bad = error_of(await c.post("/admin/tenants", json={"name": "Bad Name"}), 400, "invalid_request")
    assert bad["param"] == "name"
    bad = error_of(
        await c.post("/admin/tenants", json={"name": "b", "limits": {"tokensPerDay": -5}}),
        400,
        "invalid_request",
    )
    assert bad["param"] == "limits.tokensPerDay"
    error_of(await c.post("/admin/tenants", json={"name": "gitops"}), 409, "tenant_declared_in_file")
    error_of(await c.put("/admin/tenants/gitops/limits", json={}), 409, "tenant_declared_in_file")
    error_of(await c.delete("/admin/tenants/gitops"), 409, "tenant_declared_in_file")

    listed = (await c.get("/admin/tenants")).json()["data"]
    assert [(t["name"], t["source"]) for t in listed] == [("acme", "database"), ("gitops", "file")]
    updated = await c.put(
        "/admin/tenants/acme/limits", json={"requests_per_minute": 5, "allowedModels": ["m"]}
    )
    assert updated.json()["limits"]["requestsPerMinute"] == 5
    assert (await env.repo.get_tenant("acme")).limits == Limits(requests_per_minute=5, allowed_models=("m",))  # type: ignore[union-attr]
    error_of(await c.put("/admin/tenants/nobody/limits", json={}), 404, "tenant_not_found")
    error_of(await c.get("/admin/tenants/nobody"), 404, "tenant_not_found")
    assert (await c.delete("/admin/tenants/acme")).json()["deleted"] is True
    error_of(await c.delete("/admin/tenants/acme"), 404, "tenant_not_found")


async def test_keys_are_shown_once_revoked_at_once_and_never_audited(env: Env) -> None:
    c = env.client
    await c.post("/admin/tenants", json={"name": "acme"})
    created = await c.post(
        "/admin/tenants/acme/keys", json={"name": "ci", "expires_in_days": 30, "limits": {"maxConcurrent": 2}}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    key, key_id = body["key"], body["id"]
    assert key.startswith(f"rp_{key_id}_")
    principal = await env.auth.authenticate(f"Bearer {key}")
    assert (principal.tenant, principal.subject, principal.key_limits) == (
        "acme",
        key_id,
        Limits(max_concurrent=2),
    )

    listed = await c.get("/admin/keys", params={"tenant": "acme"})
    assert [k["id"] for k in listed.json()["data"]] == [key_id]
    assert key not in listed.text and key[len("rp_") + 16 + 1 :] not in listed.text
    assert "hash" not in listed.text

    assert (await c.delete(f"/admin/keys/{key_id}")).json() == {"id": key_id, "revoked": True}
    with pytest.raises(AuthError) as info:  # at once, despite the 60 s cache
        await env.auth.authenticate(f"Bearer {key}")
    assert info.value.code == "key_revoked"
    error_of(await c.delete(f"/admin/keys/{key_id}"), 409, "key_revoked")
    error_of(await c.delete("/admin/keys/0000000000000000"), 404, "key_not_found")
    error_of(await c.post("/admin/tenants/nobody/keys", json={}), 404, "tenant_not_found")
    bad = error_of(
        await c.post("/admin/tenants/acme/keys", json={"expires_at": "someday"}), 400, "invalid_request"
    )
    assert bad["param"] == "expires_at"
    file_key = await c.post("/admin/tenants/gitops/keys", json={})  # keys for file tenants live in the DB
    assert file_key.status_code == 201

    audit = (await c.get("/admin/audit")).json()["data"]
    assert [e["action"] for e in audit] == ["tenant.create", "key.create", "key.revoke", "key.create"]
    assert all(e["actor"].startswith("admin-api@") for e in audit)
    dump = json.dumps(await env.repo.db.fetch("SELECT * FROM audit_log"))
    assert key not in dump and key[len("rp_") + 16 + 1 :] not in dump


async def test_deleting_a_tenant_revokes_its_keys(env: Env) -> None:
    c = env.client
    await c.post("/admin/tenants", json={"name": "acme"})
    key = (await c.post("/admin/tenants/acme/keys", json={})).json()
    await env.auth.authenticate(f"Bearer {key['key']}")
    deleted = (await c.delete("/admin/tenants/acme")).json()
    assert deleted["revoked_keys"] == [key["id"]]
    with pytest.raises(AuthError) as info:
        await env.auth.authenticate(f"Bearer {key['key']}")
    assert info.value.status == 401 and info.value.code == "key_revoked"


async def test_usage_report(env: Env) -> None:
    ledger = SqlLedger(env.repo)
    for i, (tenant, model) in enumerate([("acme", "a"), ("acme", "a"), ("acme", "b"), ("zeta", "a")]):
        ledger.record(
            UsageRecord(
                f"r{i}", 1_795_000_030.0, tenant, "k", model, "/v1/chat/completions", 10, 2, 5.0, None, 200
            )
        )
    await ledger.close()
    report = await env.client.get("/admin/usage", params={"since": "2026-11-01", "tenant": "acme"})
    assert report.json()["data"] == [
        {
            "tenant": "acme",
            "model": "a",
            "day": "2026-11-18",
            "requests": 2,
            "errors": 0,
            "input_tokens": 20,
            "output_tokens": 4,
        },
        {
            "tenant": "acme",
            "model": "b",
            "day": "2026-11-18",
            "requests": 1,
            "errors": 0,
            "input_tokens": 10,
            "output_tokens": 2,
        },
    ]
    assert (await env.client.get("/admin/usage", params={"since": "2026-11-19"})).json()["data"] == []
    error_of(await env.client.get("/admin/usage", params={"since": "last week"}), 400, "invalid_request")
    error_of(await env.client.get("/admin/usage"), 400, "invalid_request")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"expires_in_days": NaN}', "expires_in_days"),  # Python's JSON reader takes NaN and Infinity
        ('{"expires_in_days": Infinity}', "expires_in_days"),
        ('{"expires_in_days": 1e300}', "expires_in_days"),
        ('{"expires_at": "nan"}', "expires_at"),
        ('{"expiresAt": "inf"}', "expires_at"),
        ('{"expires_at": 1795086430000}', "expires_at"),  # milliseconds
        ('{"expires_at": "2001-01-01"}', "expires_at"),  # the past
    ],
)
async def test_a_bad_expiry_is_refused_before_the_key_is_saved(env: Env, body: str, param: str) -> None:
    """Issue 11: these gave a 500 after the key row was saved, and then every listing failed."""
    c = env.client
    await c.post("/admin/tenants", json={"name": "acme"})
    response = await c.post(
        "/admin/tenants/acme/keys", content=body, headers={"content-type": "application/json"}
    )
    assert error_of(response, 400, "invalid_request")["param"] == param
    listed = await c.get("/admin/keys")
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert [e["action"] for e in (await c.get("/admin/audit")).json()["data"]] == ["tenant.create"]


async def test_a_limit_past_what_the_quota_store_can_count_is_refused(env: Env) -> None:
    response = await env.client.post(
        "/admin/tenants", json={"name": "acme", "limits": {"tokensPerDay": 10**30}}
    )
    assert error_of(response, 400, "invalid_request")["param"] == "limits.tokensPerDay"
    assert await env.repo.get_tenant("acme") is None


async def test_models_and_tenant_load_as_the_console_shows_them(tmp_path: Path) -> None:
    """/admin/models carries the route table's phase, replicas and context (null where the source
    does not say); /admin/tenants each tenant's requests in flight and queued, from the gauges."""
    db = await open_database(f"sqlite:///{tmp_path}/models.db")
    routes = RouteHolder(
        RouteTable.of(
            [
                Route(
                    "llama",
                    ("http://l:8000",),
                    max_model_len=4096,
                    phase="Ready",
                    replicas_ready=2,
                    replicas_desired=2,
                ),
                Route("local", ("http://127.0.0.1:8000",), source="routes.yaml"),
            ]
        )
    )
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.series("gitops", "llama").in_flight.inc(3)
    metrics.fair_queue_length.labels("gitops", "llama").inc()
    app = FastAPI()
    repo = Repository(db)
    await repo.create_tenant("idle", Limits())
    app.include_router(
        admin_router(
            repo, ADMIN, tenants=TenantDirectory(repo, {"gitops": Limits()}), routes=routes, metrics=metrics
        )
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=HEADERS) as client:
        models = (await client.get("/admin/models")).json()
        tenants = (await client.get("/admin/tenants")).json()["data"]
    await db.close()
    llama, local = models["data"]
    assert (llama["name"], llama["phase"], llama["replicas"], llama["context_length"]) == (
        "llama",
        "Ready",
        {"ready": 2, "desired": 2},
        4096,
    )
    assert (local["phase"], local["replicas"], local["context_length"]) == (
        None,
        {"ready": None, "desired": None},
        None,
    )
    assert {t["name"]: t["load"] for t in tenants} == {
        "gitops": {"in_flight": 3, "queued": 1},
        "idle": {"in_flight": 0, "queued": 0},
    }


async def test_tenant_load_is_null_without_metrics(env: Env) -> None:
    (gitops,) = (await env.client.get("/admin/tenants")).json()["data"]
    assert gitops["load"] is None
    assert (await env.client.get("/admin/models")).json() == {"object": "list", "ready": False, "data": []}
