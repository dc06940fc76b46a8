"""`respublica tenants|keys|usage` through typer's CliRunner, on a real database file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from respublica.cli import app
from respublica.serving.gateway.admin import admin_router
from respublica.serving.gateway.auth import ApiKeyAuthenticator, GatewayAuthenticator, TenantDirectory
from respublica.serving.gateway.contracts import AuthError, Limits, UsageRecord
from respublica.serving.gateway.db import Repository, open_database


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/cli.db"


def run(*args: str, code: int = 0) -> tuple[str, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    if code:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr  # one clear line
        assert "Traceback" not in result.stdout + result.stderr
    return result.stdout, result.stderr


async def authenticate(url: str, header: str) -> object:
    db = await open_database(url)
    try:
        repo = Repository(db)
        return await GatewayAuthenticator(
            ApiKeyAuthenticator(repo, TenantDirectory(repo), ttl_s=0)
        ).authenticate(header)
    finally:
        await db.close()


def test_tenants(url: str) -> None:
    assert (
        run("tenants", "create", "acme", "--tokens-per-day", "1000", "--models", "a,b", "--db", url)[0]
        == "created tenant acme\n"
    )
    run("tenants", "create", "acme", "--db", url, code=1)
    _, err = run("tenants", "create", "Bad_Name", "--db", url, code=2)
    assert "invalid tenant name" in err
    _, err = run("tenants", "create", "x", "--rpm", "lots", "--db", url, code=2)
    assert "--rpm must be a whole number or 'unlimited'" in err
    out, _ = run("tenants", "set-limits", "acme", "--rpm", "5", "--tokens-per-day", "unlimited", "--db", url)
    assert "acme" in out
    [tenant] = json.loads(run("tenants", "list", "--json", "--db", url)[0])
    assert tenant == {
        "name": "acme",
        "limits": {
            "requests_per_minute": 5,
            "tokens_per_minute": None,
            "tokens_per_day": None,
            "tokens_per_month": None,
            "max_concurrent": None,
            "allowed_models": ["a", "b"],
            "default_max_tokens": None,
            "fair_share_weight": None,
            "priority": None,
            "max_queued": None,
        },
    }
    table = run("tenants", "list", "--db", url)[0].splitlines()
    assert table[0].split()[:3] == ["NAME", "RPM", "TPM"] and table[1].split()[:2] == ["acme", "5"]
    run("tenants", "set-limits", "nobody", "--rpm", "1", "--db", url, code=1)
    assert run("tenants", "delete", "acme", "--db", url)[0].startswith("deleted tenant acme")
    run("tenants", "delete", "acme", "--db", url, code=1)


def test_keys_shown_once_then_revoked(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESPUBLICA_DB", url)  # no --db: the environment names the database
    run("tenants", "create", "acme")
    out, err = run(
        "keys",
        "create",
        "--tenant",
        "acme",
        "--name",
        "ci",
        "--expires-in-days",
        "7",
        "--max-concurrent",
        "2",
    )
    key = out.strip()
    assert key.startswith("rp_") and "shown once" in err
    key_id = key.split("_")[1]
    principal = asyncio.run(authenticate(url, f"Bearer {key}"))
    assert principal.key_limits == Limits(max_concurrent=2)  # type: ignore[attr-defined]

    listing = run("keys", "list", "--tenant", "acme")[0]
    assert key_id in listing and "active" in listing and key.split("_", 2)[2] not in listing
    [row] = json.loads(run("keys", "list", "--json")[0])
    assert (row["id"], row["state"], row["name"]) == (key_id, "active", "ci")

    _, err = run("keys", "revoke", key, code=2)
    assert "pass only its id" in err
    assert run("keys", "revoke", key_id)[0] == f"revoked key {key_id}\n"
    run("keys", "revoke", key_id, code=1)
    run("keys", "revoke", "0123456789abcdef", code=1)
    with pytest.raises(AuthError, match="revoked"):
        asyncio.run(authenticate(url, f"Bearer {key}"))
    assert "revoked" in run("keys", "list")[0]

    _, err = run("keys", "create", "--tenant", "nobody", code=1)
    assert "tenant 'nobody' does not exist" in err
    run("keys", "create", "--tenant", "acme", "--expires-at", "2001-01-01", code=2)


def test_keys_for_a_tenant_declared_in_the_file(url: str, tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants:\n  - name: gitops\n")
    out, _ = run("keys", "create", "--tenant", "gitops", "--tenants-file", str(tenants), "--db", url)
    assert out.startswith("rp_")


def test_usage(url: str) -> None:
    async def write() -> None:
        db = await open_database(url)
        repo = Repository(db)
        await repo.insert_usage(
            [
                UsageRecord(
                    f"r{i}",
                    1_795_000_030.0 + i * 86400,
                    t,
                    "k",
                    "m",
                    "/v1/completions",
                    100,
                    10,
                    1.0,
                    None,
                    s,
                )
                for i, (t, s) in enumerate([("acme", 200), ("acme", 429), ("zeta", 200)])
            ]
        )
        await db.close()

    asyncio.run(write())
    out, _ = run("usage", "--tenant", "acme", "--since", "2026-11-01", "--db", url)
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["DAY", "TENANT", "MODEL", "REQUESTS", "ERRORS", "INPUT", "OUTPUT"]
    assert lines[1:] == [
        ["2026-11-18", "acme", "m", "1", "0", "100", "10"],
        ["2026-11-19", "acme", "m", "1", "1", "100", "10"],
        ["total", "2", "1", "200", "20"],
    ]
    data = json.loads(run("usage", "--since", "2026-11-19", "--json", "--db", url)[0])
    assert sorted(d["tenant"] for d in data) == ["acme", "zeta"]
    _, err = run("usage", "--since", "last tuesday", "--db", url, code=2)
    assert "is not a date" in err


def test_bad_database_url(tmp_path: Path) -> None:
    _, err = run("tenants", "list", "--db", "mysql://u:pw@h/db", code=2)
    assert "unsupported database URL" in err and "pw" not in err


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--expires-in-days", "nan"], "--expires-in-days"),
        (["--expires-in-days", "inf"], "--expires-in-days"),
        (["--expires-in-days", "1e300"], "--expires-in-days"),
        (["--expires-at", "nan"], "--expires-at"),
        (["--expires-at", "1795086430000"], "--expires-at"),  # milliseconds
        (["--expires-at", "2001-01-01"], "--expires-at"),
        (["--tokens-per-day", str(10**30)], "--tokens-per-day"),
        (["--max-concurrent", "-1"], "--max-concurrent"),
    ],
)
def test_bad_key_options_are_refused_before_the_key_is_saved(url: str, args: list[str], option: str) -> None:
    """Issue 11: `nan` stored a key that never expires; other values broke every listing."""
    run("tenants", "create", "acme", "--db", url)
    _, err = run("keys", "create", "--tenant", "acme", *args, "--db", url, code=2)
    assert err.startswith(f"error: {option}: ")
    assert json.loads(run("keys", "list", "--json", "--db", url)[0]) == []


ADMIN = "admin-key-0123456789abcdef"


async def audit_entries(url: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    db = await open_database(url)
    try:
        return [(e.actor, e.action, e.target, e.detail) for e in await Repository(db).audit_log()]
    finally:
        await db.close()


async def administer_over_http(url: str) -> None:
    db = await open_database(url)
    api = FastAPI()
    api.include_router(admin_router(Repository(db), ADMIN))
    transport = httpx.ASGITransport(app=api)
    headers = {"authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=headers) as c:
        limits = {"tokensPerDay": 1000, "allowedModels": ["a", "b"]}
        for response in (
            await c.post("/admin/tenants", json={"name": "acme", "limits": limits}),
            await c.put("/admin/tenants/acme/limits", json={**limits, "requestsPerMinute": 5}),
            await c.post(
                "/admin/tenants/acme/keys",
                json={"name": "ci", "expires_at": "2030-01-01", "limits": {"maxConcurrent": 2}},
            ),
            gone := await c.post("/admin/tenants/acme/keys", json={}),
            await c.delete(f"/admin/keys/{gone.json()['id']}"),
            await c.delete("/admin/tenants/acme"),
        ):
            assert response.is_success, response.text
    await db.close()


def administer_with_the_cli(url: str) -> None:
    run("tenants", "create", "acme", "--tokens-per-day", "1000", "--models", "a,b", "--db", url)
    run("tenants", "set-limits", "acme", "--rpm", "5", "--db", url)
    run(
        "keys",
        "create",
        "-t",
        "acme",
        "--name",
        "ci",
        "--expires-at",
        "2030-01-01",
        "--max-concurrent",
        "2",
        "--db",
        url,
    )
    gone = run("keys", "create", "--tenant", "acme", "--db", url)[0].strip()
    run("keys", "revoke", gone.split("_")[1], "--db", url)
    run("tenants", "delete", "acme", "--db", url)


def test_http_and_cli_write_the_same_audit_payloads(db_url: str) -> None:
    """The same six changes through each surface, on one database: the same audit entries.

    Only the actor and the new keys' random ids may differ. (Before the admin service, the HTTP
    API wrote the limits camelCase and the CLI snake_case.)
    """
    asyncio.run(administer_over_http(db_url))
    administer_with_the_cli(db_url)
    entries = asyncio.run(audit_entries(db_url))
    assert len(entries) == 12
    http, cli = entries[:6], entries[6:]
    assert all(actor.startswith("admin-api@") for actor, *_ in http)
    assert all(actor.startswith("cli:") for actor, *_ in cli)

    def without_key_ids(part: list[tuple[str, str, str, dict[str, Any]]]) -> str:
        text = json.dumps([entry[1:] for entry in part], sort_keys=True)
        for n, key_id in enumerate(target for _, action, target, _ in part if action == "key.create"):
            text = text.replace(key_id, f"key-{n}")
        return text

    assert without_key_ids(http) == without_key_ids(cli)
    [create, set_limits, kept, _, revoke, delete] = [entry[1:] for entry in cli]
    assert create == (
        "tenant.create",
        "acme",
        {
            "limits": {
                "requestsPerMinute": None,
                "tokensPerMinute": None,
                "tokensPerDay": 1000,
                "tokensPerMonth": None,
                "maxConcurrent": None,
                "allowedModels": ["a", "b"],
                "defaultMaxTokens": None,
                "fairShareWeight": None,
                "priority": None,
                "maxQueued": None,
            }
        },
    )
    assert set_limits[2]["limits"]["requestsPerMinute"] == 5
    assert kept[2]["expiresAt"] == "2030-01-01T00:00:00Z" and kept[2]["limits"]["maxConcurrent"] == 2
    assert revoke[:1] == ("key.revoke",) and revoke[2] == {"tenant": "acme"}
    assert delete == ("tenant.delete", "acme", {"revokedKeys": [kept[1]]})
