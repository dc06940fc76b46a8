"""The admin service itself, without HTTP or typer, on SQLite and on a real PostgreSQL.

Every use case once: its result, its one camelCase audit entry, and each bad input refused before
anything is written (the failures found by the attack run of issue 11: key expiries of `nan`,
`inf`, `1e300` or milliseconds saved and then breaking every listing; expiries in the past).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from helpers.clock import Clock
from respublica.serving.gateway.admin_service import (
    INSTANT_MAX,
    KEY_LIFETIME_MAX_S,
    AdminService,
    Conflict,
    InvalidInput,
    KeyRequest,
    LimitsPatch,
    NotFound,
    check_limits,
    key_expiry,
)
from respublica.serving.gateway.contracts import Limits, UsageRecord
from respublica.serving.gateway.db import Repository
from respublica.serving.gateway.db.codec import LIMIT_MAX

ACTOR = "test:admin"
DAY = 86400.0


def service(repo: Repository, clock: Clock, **kwargs: Any) -> AdminService:
    return AdminService(repo, declared={"gitops": Limits(max_concurrent=1)}, clock=clock, **kwargs)


async def rows(repo: Repository) -> dict[str, int]:
    """How many rows each admin table holds: what "nothing was written" is checked against."""
    counts = {}
    for table in ("tenants", "api_keys", "audit_log"):
        [row] = await repo.db.fetch(f"SELECT COUNT(*) AS n FROM {table}")
        counts[table] = int(row["n"])
    return counts


async def test_tenants(repo: Repository, clock: Clock) -> None:
    forgotten: list[str] = []
    admin = service(repo, clock, forget_tenant=forgotten.append)
    created = await admin.create_tenant(ACTOR, "acme", Limits(tokens_per_day=1000, allowed_models=("a", "b")))
    assert (created.name, created.source, created.limits.tokens_per_day) == ("acme", "database", 1000)
    with pytest.raises(Conflict) as exists:
        await admin.create_tenant(ACTOR, "acme")
    assert exists.value.code == "tenant_exists"
    for change in (
        admin.create_tenant(ACTOR, "gitops"),
        admin.set_limits(ACTOR, "gitops", Limits()),
        admin.delete_tenant(ACTOR, "gitops"),
    ):
        with pytest.raises(Conflict) as declared:
            await change
        assert declared.value.code == "tenant_declared_in_file"

    assert [(t.name, t.source) for t in await admin.list_tenants()] == [
        ("acme", "database"),
        ("gitops", "file"),
    ]
    assert (await admin.get_tenant("gitops")).limits == Limits(max_concurrent=1)

    patched = await admin.set_limits(ACTOR, "acme", LimitsPatch(requests_per_minute=5, tokens_per_day=None))
    assert patched.limits == Limits(requests_per_minute=5, allowed_models=("a", "b"))  # the rest kept
    replaced = await admin.set_limits(ACTOR, "acme", Limits(tokens_per_month=9))
    assert replaced.limits == Limits(tokens_per_month=9)  # a whole Limits replaces them
    for missing in (
        admin.get_tenant("nobody"),
        admin.set_limits(ACTOR, "nobody", Limits()),
        admin.set_limits(ACTOR, "nobody", LimitsPatch(max_concurrent=1)),
        admin.delete_tenant(ACTOR, "nobody"),
    ):
        with pytest.raises(NotFound) as info:
            await missing
        assert info.value.code == "tenant_not_found"

    key = await admin.create_key(ACTOR, KeyRequest("acme"))
    deleted = await admin.delete_tenant(ACTOR, "acme")
    assert deleted.revoked_keys == (key.view.key_id,)
    assert [k.state for k in await admin.list_keys("acme")] == ["revoked"]
    assert forgotten == ["acme", "acme", "acme", "acme"]  # create, two changes, delete

    audit = [(e.actor, e.action, e.target, e.detail) for e in await admin.audit_log()]
    unlimited = {
        "requestsPerMinute": None,
        "tokensPerMinute": None,
        "tokensPerDay": None,
        "tokensPerMonth": None,
        "maxConcurrent": None,
        "allowedModels": ["*"],
        "defaultMaxTokens": None,
        "fairShareWeight": None,
        "priority": None,
        "maxQueued": None,
    }
    assert audit == [
        (
            ACTOR,
            "tenant.create",
            "acme",
            {"limits": {**unlimited, "tokensPerDay": 1000, "allowedModels": ["a", "b"]}},
        ),
        (
            ACTOR,
            "tenant.set_limits",
            "acme",
            {"limits": {**unlimited, "requestsPerMinute": 5, "allowedModels": ["a", "b"]}},
        ),
        (ACTOR, "tenant.set_limits", "acme", {"limits": {**unlimited, "tokensPerMonth": 9}}),
        (
            ACTOR,
            "key.create",
            key.view.key_id,
            {"tenant": "acme", "name": "", "expiresAt": None, "limits": None},
        ),
        (ACTOR, "tenant.delete", "acme", {"revokedKeys": [key.view.key_id]}),
    ]


async def test_keys(repo: Repository, clock: Clock) -> None:
    forgotten: list[str] = []
    admin = service(repo, clock, forget_key=forgotten.append)
    await admin.create_tenant(ACTOR, "acme")
    created = await admin.create_key(
        ACTOR, KeyRequest("acme", name="ci", expires_in_days=1, limits=Limits(max_concurrent=2))
    )
    view = created.view
    assert created.key.startswith(f"rp_{view.key_id}_")
    assert (view.tenant, view.name, view.state, view.limits) == (
        "acme",
        "ci",
        "active",
        Limits(max_concurrent=2),
    )
    assert (view.created_at, view.expires_at) == (clock.now, clock.now + DAY)
    file_key = await admin.create_key(ACTOR, KeyRequest("gitops", expires_at="2030-01-01"))
    assert file_key.view.expires_at == 1_893_456_000.0  # keys of file tenants live in the database
    with pytest.raises(NotFound, match="tenant 'nobody' does not exist"):
        await admin.create_key(ACTOR, KeyRequest("nobody"))

    clock.advance(DAY)  # the expiry is the instant the key stops working
    assert [(k.key_id, k.state) for k in await admin.list_keys("acme")] == [(view.key_id, "expired")]
    revoked = await admin.revoke_key(ACTOR, view.key_id)
    assert revoked.state == "revoked" and revoked.revoked_at is not None
    assert forgotten == [view.key_id]
    with pytest.raises(Conflict) as again:
        await admin.revoke_key(ACTOR, view.key_id)
    assert again.value.code == "key_revoked"
    with pytest.raises(NotFound) as missing:
        await admin.revoke_key(ACTOR, "0123456789abcdef")
    assert missing.value.code == "key_not_found"
    with pytest.raises(InvalidInput, match="whole key"):
        await admin.revoke_key(ACTOR, created.key)

    audit = [(e.action, e.target, e.detail) for e in await admin.audit_log()][1:]
    assert audit == [
        (
            "key.create",
            view.key_id,
            {
                "tenant": "acme",
                "name": "ci",
                "expiresAt": "2026-11-19T11:07:10Z",
                "limits": {
                    "requestsPerMinute": None,
                    "tokensPerMinute": None,
                    "tokensPerDay": None,
                    "tokensPerMonth": None,
                    "maxConcurrent": 2,
                    "allowedModels": ["*"],
                    "defaultMaxTokens": None,
                    "fairShareWeight": None,
                    "priority": None,
                    "maxQueued": None,
                },
            },
        ),
        (
            "key.create",
            file_key.view.key_id,
            {"tenant": "gitops", "name": "", "expiresAt": "2030-01-01T00:00:00Z", "limits": None},
        ),
        ("key.revoke", view.key_id, {"tenant": "acme"}),
    ]
    stored = str(await repo.db.fetch("SELECT * FROM audit_log"))
    assert created.key.split("_", 2)[2] not in stored and view.key_id in stored  # never a secret


BAD_KEYS = [
    pytest.param(KeyRequest("acme", expires_in_days=math.nan), "expires_in_days", id="days-nan"),
    pytest.param(KeyRequest("acme", expires_in_days=math.inf), "expires_in_days", id="days-inf"),
    pytest.param(KeyRequest("acme", expires_in_days=1e300), "expires_in_days", id="days-1e300"),
    pytest.param(KeyRequest("acme", expires_in_days=0), "expires_in_days", id="days-zero"),
    pytest.param(KeyRequest("acme", expires_in_days=-1), "expires_in_days", id="days-negative"),
    pytest.param(KeyRequest("acme", expires_in_days=36526), "expires_in_days", id="days-past-a-century"),
    pytest.param(KeyRequest("acme", expires_at="nan"), "expires_at", id="at-nan-text"),
    pytest.param(KeyRequest("acme", expires_at="inf"), "expires_at", id="at-inf-text"),
    pytest.param(KeyRequest("acme", expires_at="1e300"), "expires_at", id="at-1e300-text"),
    pytest.param(KeyRequest("acme", expires_at=math.nan), "expires_at", id="at-nan"),
    pytest.param(KeyRequest("acme", expires_at=-math.inf), "expires_at", id="at-minus-inf"),
    pytest.param(KeyRequest("acme", expires_at=1_795_086_430_000), "expires_at", id="at-milliseconds"),
    pytest.param(KeyRequest("acme", expires_at="2001-01-01"), "expires_at", id="at-in-the-past"),
    pytest.param(KeyRequest("acme", expires_at="someday"), "expires_at", id="at-not-a-date"),
    pytest.param(KeyRequest("acme", expires_at="2030-01-01", expires_in_days=1), "expires_at", id="both"),
    pytest.param(KeyRequest("acme", name="x" * 201), "name", id="name-too-long"),
    pytest.param(KeyRequest("acme", name="ci\n2"), "name", id="name-control-character"),
    pytest.param(
        KeyRequest("acme", limits=Limits(max_concurrent=-1)), "limits.maxConcurrent", id="limit-negative"
    ),
    pytest.param(
        KeyRequest("acme", limits=Limits(tokens_per_day=LIMIT_MAX + 1)),
        "limits.tokensPerDay",
        id="limit-huge",
    ),
    pytest.param(
        KeyRequest("acme", limits=Limits(allowed_models=())), "limits.allowedModels", id="no-models"
    ),
]


@pytest.mark.parametrize(("request_", "param"), BAD_KEYS)
async def test_a_bad_key_is_refused_before_anything_is_written(
    repo: Repository, clock: Clock, request_: KeyRequest, param: str
) -> None:
    admin = service(repo, clock)
    await admin.create_tenant(ACTOR, "acme")
    before = await rows(repo)
    with pytest.raises(InvalidInput) as info:
        await admin.create_key(ACTOR, request_)
    assert info.value.param == param and info.value.code == "invalid_request"
    assert info.value.message and "\n" not in info.value.message
    assert await rows(repo) == before
    assert await admin.list_keys() == []  # and listing still works for everyone


BAD_TENANTS = [
    pytest.param("Bad Name", Limits(), "name", id="name-uppercase-space"),
    pytest.param("*", Limits(), "name", id="name-star"),
    pytest.param("a" * 64, Limits(), "name", id="name-too-long"),
    pytest.param("", Limits(), "name", id="name-empty"),
    pytest.param("acme", Limits(tokens_per_day=-5), "limits.tokensPerDay", id="negative"),
    pytest.param("acme", Limits(tokens_per_month=10**30), "limits.tokensPerMonth", id="overflows-redis"),
    pytest.param("acme", Limits(default_max_tokens=0), "limits.defaultMaxTokens", id="zero-cap"),
    pytest.param("acme", Limits(allowed_models=()), "limits.allowedModels", id="no-models"),
]


@pytest.mark.parametrize(("name", "limits", "param"), BAD_TENANTS)
async def test_a_bad_tenant_is_refused_before_anything_is_written(
    repo: Repository, clock: Clock, name: str, limits: Limits, param: str
) -> None:
    admin = service(repo, clock)
    with pytest.raises(InvalidInput) as info:
        await admin.create_tenant(ACTOR, name, limits)
    assert info.value.param == param
    assert await rows(repo) == {"tenants": 0, "api_keys": 0, "audit_log": 0}


async def test_bad_limits_are_refused_before_a_change(repo: Repository, clock: Clock) -> None:
    admin = service(repo, clock)
    await admin.create_tenant(ACTOR, "acme", Limits(tokens_per_day=10))
    before = await rows(repo)
    for change in (Limits(requests_per_minute=-1), LimitsPatch(tokens_per_minute=LIMIT_MAX + 1)):
        with pytest.raises(InvalidInput):
            await admin.set_limits(ACTOR, "acme", change)
    assert await rows(repo) == before
    assert (await admin.get_tenant("acme")).limits == Limits(tokens_per_day=10)


async def test_usage_and_audit_reports(repo: Repository, clock: Clock) -> None:
    admin = service(repo, clock)
    day = 1_795_000_030.0  # 2026-11-18, the clock's day
    await repo.insert_usage(
        [
            UsageRecord(f"r{i}", started, "acme", "k", "m", "/v1/completions", 100, 10, 1.0, None, 200)
            for i, started in enumerate([day - 40 * DAY, day, day + 1])
        ]
    )
    [this_month] = await admin.usage()  # no start: this UTC month, by the service's clock
    assert (this_month.day, this_month.requests, this_month.input_tokens) == ("2026-11-18", 2, 200)
    assert [t.requests for t in await admin.usage("2026-01-01", until=day + 1)] == [1, 1]
    assert await admin.usage(day + 2, tenant="acme") == []
    for since, until, param in (
        ("nan", None, "since"),
        ("inf", None, "since"),
        ("last week", None, "since"),
        (-1.0, None, "since"),
        (INSTANT_MAX + 1, None, "since"),
        ("2026-11-18", "2026-11-01", "until"),
    ):
        with pytest.raises(InvalidInput) as info:
            await admin.usage(since, until=until)
        assert info.value.param == param
    with pytest.raises(InvalidInput):
        await admin.audit_log("nan")
    assert await admin.audit_log() == []


def test_the_expiry_window_is_exact() -> None:
    now = 1_795_000_030.0
    assert key_expiry(None, None, now) is None
    assert key_expiry(now + 1, None, now) == now + 1
    assert key_expiry(now + KEY_LIFETIME_MAX_S, None, now) == now + KEY_LIFETIME_MAX_S
    for refused in (now, now + KEY_LIFETIME_MAX_S + 1):
        with pytest.raises(InvalidInput):
            key_expiry(refused, None, now)
    assert key_expiry(None, KEY_LIFETIME_MAX_S / DAY, now) == now + KEY_LIFETIME_MAX_S
    with pytest.raises(InvalidInput):
        key_expiry(None, KEY_LIFETIME_MAX_S / DAY + 1, now)
    with pytest.raises(InvalidInput):
        key_expiry(True, None, now)  # a JSON `true` is no instant, though bool is an int


def test_limits_are_bounded_at_limit_max() -> None:
    assert check_limits(Limits(tokens_per_month=LIMIT_MAX)).tokens_per_month == LIMIT_MAX
    with pytest.raises(InvalidInput, match=r"^limits\.tokensPerMonth: "):
        check_limits(Limits(tokens_per_month=LIMIT_MAX + 1))
    assert LIMIT_MAX < 2**63 // 1000  # a thousand full budgets still fit a Redis counter
