"""The console over HTTP (httpx against the ASGI app): login, CSRF, CSP, pages, CSV export."""

from __future__ import annotations

import csv
import io
import re

import httpx
from fastapi import FastAPI

from respublica.serving.gateway.admin_service import AdminService
from respublica.serving.gateway.console import console_router
from respublica.serving.gateway.console.router import CSP
from respublica.serving.gateway.contracts import UsageRecord
from respublica.serving.gateway.routing.table import RouteHolder

from .conftest import ADMIN, BASE, Console


def usage(
    rid: str,
    at: float,
    tenant: str,
    model: str,
    tokens: tuple[int, int],
    *,
    status: int = 200,
    ttft_ms: float | None = None,
) -> UsageRecord:
    return UsageRecord(
        request_id=rid,
        started_at=at,
        tenant=tenant,
        subject="k",
        model=model,
        endpoint="/v1/chat/completions",
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        latency_ms=50.0,
        ttft_ms=ttft_ms,
        status=status,
        stream=ttft_ms is not None,
    )


PAGES = ("/console/models", "/console/tenants", "/console/usage", "/console/audit", "/console/usage.csv")


async def test_every_page_needs_a_login(console: Console) -> None:
    for path in PAGES:
        response = await console.client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/console/login"
    # A change without a session is not made, whatever the form holds.
    refused = await console.client.post("/console/tenants", data={"name": "sneaky", "csrf": "x"})
    assert refused.status_code == 303
    assert await console.repo.get_tenant("sneaky") is None


async def test_a_wrong_admin_key_gets_no_session(console: Console) -> None:
    page = await console.client.get("/console/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert token is not None
    response = await console.client.post(
        "/console/login", data={"admin_key": "not-the-admin-key-at-all", "login_csrf": token.group(1)}
    )
    assert response.status_code == 401
    assert "That is not the admin key" in response.text
    assert "rp_console=" not in response.headers.get("set-cookie", "")
    assert (await console.client.get("/console/models")).status_code == 303


async def test_login_needs_its_own_csrf_token(console: Console) -> None:
    # A form posted from elsewhere has no login cookie: refused, no session.
    response = await console.client.post("/console/login", data={"admin_key": ADMIN, "login_csrf": "forged"})
    assert response.status_code == 403
    assert "rp_console=" not in response.headers.get("set-cookie", "")


async def test_the_session_cookie_is_httponly_strict_and_scoped(console: Console) -> None:
    page = await console.client.get("/console/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert token is not None
    done = await console.client.post(
        "/console/login", data={"admin_key": ADMIN, "login_csrf": token.group(1)}
    )
    cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith("rp_console="))
    attributes = {part.strip().split("=")[0] for part in cookie.split(";")[1:]}
    assert {"HttpOnly", "SameSite", "Path", "Max-Age"} <= attributes
    assert "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in attributes  # not asked for: plain HTTP on loopback


async def test_secure_cookie_when_configured(console: Console) -> None:
    app = FastAPI()
    app.include_router(
        console_router(
            AdminService(console.repo), RouteHolder(), ADMIN, secure_cookie=True, clock=console.clock
        )
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        page = await client.get("/console/login")
        assert "; Secure" in page.headers["set-cookie"]


async def test_csp_and_security_headers_on_every_response(console: Console) -> None:
    unauthenticated = [await console.client.get(p) for p in ("/console/login", "/console/models")]
    await console.login()
    responses = [
        *unauthenticated,
        *[await console.client.get(p) for p in PAGES],
        await console.client.get("/console/static/console.css"),
        await console.client.post("/console/tenants", data={"name": "x"}),  # refused: no CSRF token
    ]
    for response in responses:
        assert response.headers["content-security-policy"] == CSP
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in CSP and "script-src 'none'" in CSP and "unsafe-inline" not in CSP
    for response in responses:
        if response.headers.get("content-type", "").startswith("text/html"):
            html = response.text
            assert "<script" not in html and " style=" not in html, response.url
            # Every asset is the gateway's own: no scheme, no other host.
            for ref in re.findall(r'(?:href|src|action)="([^"]*)"', html):
                assert ref.startswith("/console/"), ref


async def test_every_form_is_refused_without_the_session_csrf_token(console: Console) -> None:
    csrf = await console.login()
    await console.client.post("/console/tenants", data={"name": "acme", "csrf": csrf})  # something to act on
    posts = [
        ("/console/tenants", {"name": "made-anyway"}),
        ("/console/tenants/acme/limits", {"tokensPerDay": "1"}),
        ("/console/tenants/acme/keys", {"key_name": "k"}),
        ("/console/tenants/acme/delete", {}),
        ("/console/keys/0123456789abcdef/revoke", {}),
        ("/console/logout", {}),
    ]
    for path, form in posts:
        for sent in ({}, {"csrf": "wrong-token"}, {"csrf": ""}):
            response = await console.client.post(path, data={**form, **sent})
            assert response.status_code == 403, (path, sent, response.status_code)
            assert "CSRF" in response.text
    assert await console.repo.get_tenant("made-anyway") is None
    acme = await console.repo.get_tenant("acme")
    assert acme is not None and acme.limits.tokens_per_day is None
    assert await console.repo.list_keys("acme") == []
    # From another site, even with the right token: refused by the Origin check.
    foreign = await console.client.post(
        "/console/tenants", data={"name": "foreign", "csrf": csrf}, headers={"origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert await console.repo.get_tenant("foreign") is None
    same = await console.client.post(
        "/console/tenants", data={"name": "same-site", "csrf": csrf}, headers={"origin": BASE}
    )
    assert same.status_code == 201


async def test_forged_expired_and_logged_out_sessions_are_refused(console: Console) -> None:
    csrf = await console.login()
    cookie = console.client.cookies["rp_console"]

    def use(value: str) -> None:
        console.client.cookies.clear()
        console.client.cookies.set("rp_console", value, domain="gateway.test", path="/console")

    payload, _, signature = cookie.rpartition(".")
    forged = payload.replace(payload.split(".")[1], "9999999999") + "." + signature
    use(forged)
    assert (await console.client.get("/console/models")).status_code == 303
    use(cookie)
    assert (await console.client.get("/console/models")).status_code == 200
    out = await console.client.post("/console/logout", data={"csrf": csrf})
    assert out.status_code == 303
    assert "rp_console" not in console.client.cookies  # the browser is told to drop it
    use(cookie)  # the old cookie, kept by a thief
    assert (await console.client.get("/console/models")).status_code == 303
    console.client.cookies.clear()
    await console.login()
    console.clock.advance(8 * 3600 + 1)
    assert (await console.client.get("/console/models")).status_code == 303


async def test_tenant_and_key_lifecycle_through_the_service(console: Console) -> None:
    csrf = await console.login()
    created = await console.client.post(
        "/console/tenants",
        data={"name": "physics", "tokensPerDay": "1,000", "allowedModels": "llama", "csrf": csrf},
    )
    assert created.status_code == 201, created.text
    row = await console.repo.get_tenant("physics")
    assert row is not None and row.limits.tokens_per_day == 1000 and row.limits.allowed_models == ("llama",)
    bad = await console.client.post("/console/tenants", data={"name": "Bad Name", "csrf": csrf})
    assert bad.status_code == 400 and "invalid tenant name" in bad.text
    bad = await console.client.post(
        "/console/tenants", data={"name": "x", "tokensPerDay": "lots", "csrf": csrf}
    )
    assert bad.status_code == 400 and "not a whole number" in bad.text
    dup = await console.client.post("/console/tenants", data={"name": "physics", "csrf": csrf})
    assert dup.status_code == 409

    key_page = await console.client.post(
        "/console/tenants/physics/keys", data={"key_name": "notebook", "expires_in_days": "30", "csrf": csrf}
    )
    assert key_page.status_code == 201
    secret = re.search(r'id="secret" value="(rp_[0-9a-f]{16}_[^"]+)"', key_page.text)
    assert secret is not None
    key = secret.group(1)
    key_id = key.split("_")[1]
    # Shown once: not on the next page, not in the audit view.
    again = await console.client.get("/console/tenants")
    assert key not in again.text and key_id in again.text and key.split("_", 2)[2] not in again.text
    audit = await console.client.get("/console/audit?days=3660")
    assert key.split("_", 2)[2] not in audit.text
    assert "key.create" in audit.text and "tenant.create" in audit.text and "console@" in audit.text

    revoked = await console.client.post(f"/console/keys/{key_id}/revoke", data={"csrf": csrf})
    assert revoked.status_code == 200 and f"Key {key_id} revoked." in revoked.text
    stored = await console.repo.get_key(key_id)
    assert stored is not None and stored.revoked_at is not None
    twice = await console.client.post(f"/console/keys/{key_id}/revoke", data={"csrf": csrf})
    assert twice.status_code == 409
    # The tenants file's tenants are read-only here too.
    refused = await console.client.post("/console/tenants/gitops/limits", data={"csrf": csrf})
    assert refused.status_code == 409 and "tenants file" in refused.text


async def test_spend_against_budgets(console: Console) -> None:
    now = console.clock()
    await console.repo.insert_usage(
        [
            usage("r1", now - 60, "gitops", "llama", (300, 150)),
            usage("r2", now - 40 * 86400, "gitops", "llama", (9, 9)),
        ]
    )
    csrf = await console.login()
    await console.client.post("/console/tenants", data={"name": "idle", "tokensPerMonth": "0", "csrf": csrf})
    page = (await console.client.get("/console/tenants")).text
    gitops = page[page.index('id="tenant-gitops"') : page.index('id="tenant-idle"')]
    assert "450 tokens" in gitops  # today: the request of 40 days ago is not counted
    assert 'aria-label="90% of 500"' in gitops and 'class="fill warn" width="90.0"' in gitops
    assert "no budget" in gitops  # no monthly budget
    idle = page[page.index('id="tenant-idle"') :]
    assert 'aria-label="100% of 0"' in idle and 'class="fill over"' in idle


async def test_models_page_figures_of_the_last_hour(console: Console) -> None:
    now = console.clock()
    records = [
        usage(f"s{i}", now - 100, "gitops", "llama", (10, 5), ttft_ms=float(i * 10)) for i in range(1, 21)
    ]
    records.append(usage("e1", now - 50, "gitops", "llama", (0, 0), status=502))
    records.append(usage("old", now - 7200, "gitops", "llama", (1000, 1000)))
    records.append(usage("p1", now - 10, "gitops", "private", (7, 0)))
    await console.repo.insert_usage(records)
    await console.login()
    page = (await console.client.get("/console/models")).text
    llama = page[page.index("<strong>llama</strong>") : page.index("<strong>private</strong>")]
    cells = re.findall(r'<td class="n[^"]*">([^<]*)</td>', llama)
    # replicas (ready / desired), context, requests, tokens, errors, p50, p95
    assert cells == ["1 / 2", "8,192", "21", "300", "1", "100 ms", "190 ms"]
    assert "ModelDeployment ai/llama (Degraded)" in llama and "http://10.0.0.7:8000" in llama
    assert '<span class="pill ok">Degraded</span>' in llama  # the phase, while it has an endpoint
    private = page[page.index("<strong>private</strong>") :]
    assert "no endpoint" in private and "gitops" in private and "no data" in private
    # A routes file says nothing of replicas or context: a dash, not a made-up 0.
    unknown = re.findall(r'<td class="n (replicas|context)"><span class="muted">—</span></td>', private)
    assert unknown == ["replicas", "context"]


async def test_tenants_page_shows_requests_in_flight_and_queued(console: Console) -> None:
    """From the gateway's own gauges (the in-flight gauge routes/openai.py keeps, the fair-queue
    gauge fairness/gate.py keeps), summed over models; a tenant with neither reads 0, not blank."""
    series = console.metrics.series("gitops", "llama")
    series.in_flight.inc(2)
    console.metrics.series("gitops", "private").in_flight.inc()
    console.metrics.fair_queue_length.labels("gitops", "llama").inc(4)
    csrf = await console.login()
    await console.client.post("/console/tenants", data={"name": "idle", "csrf": csrf})
    page = (await console.client.get("/console/tenants")).text
    gitops = page[page.index('id="tenant-gitops"') : page.index('id="tenant-idle"')]
    assert '<span class="in-flight">3</span> in flight, <span class="queued">4</span> queued' in gitops
    idle = page[page.index('id="tenant-idle"') :]
    assert '<span class="in-flight">0</span> in flight, <span class="queued">0</span> queued' in idle
    series.in_flight.dec(2)
    page = (await console.client.get("/console/tenants")).text
    assert '<span class="in-flight">1</span> in flight' in page


async def test_usage_csv_export(console: Console) -> None:
    day = 86400
    start = 1_794_960_000.0  # 2026-11-18T00:00Z, the clock's day
    await console.repo.insert_usage(
        [
            usage("a", start + 10, "gitops", "llama", (100, 20)),
            usage("b", start + 20, "gitops", "llama", (1, 2), status=429),
            usage("c", start - day + 5, "physics", "=HYPERLINK(1)", (5, 5)),
            usage("d", start - 3 * day, "physics", "llama", (7, 7)),  # before the range
        ]
    )
    await console.login()
    response = await console.client.get("/console/usage.csv?from=2026-11-17&to=2026-11-18")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="usage-2026-11-17-2026-11-18.csv"' in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows == [
        ["day", "tenant", "model", "requests", "errors", "input_tokens", "output_tokens"],
        ["2026-11-17", "physics", "'=HYPERLINK(1)", "1", "0", "5", "5"],
        ["2026-11-18", "gitops", "llama", "2", "1", "101", "22"],
    ]
    bad = await console.client.get("/console/usage.csv?from=2026-11-18&to=2026-11-01")
    assert bad.status_code == 400 and "must not come after" in bad.text


async def test_usage_page_draws_both_charts(console: Console) -> None:
    await console.repo.insert_usage([usage("a", console.clock() - 60, "gitops", "<b>llama</b>", (100, 20))])
    await console.login()
    page = (await console.client.get("/console/usage")).text
    assert page.count('<svg class="chart"') == 2
    assert "<b>llama</b>" not in page and "&lt;b&gt;llama&lt;/b&gt;" in page  # names are escaped
    assert re.search(r'<rect class="s0"[^>]*><title>2026-11-18 gitops: 120 tokens</title>', page)
    assert 'href="/console/usage.csv?from=2026-11-05&amp;to=2026-11-18"' in page
