"""The console behind an authenticating proxy: OIDC bearer tokens with an admin role claim.

Real RS256 JWTs signed by a test key, verified by the gateway's own OidcAuthenticator against a
JWKS served over HTTP on loopback (as a Keycloak realm's `.../protocol/openid-connect/certs`).
"""

from __future__ import annotations

import html
import http.server
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from helpers.clock import Clock
from respublica.serving.gateway.admin_service import AdminService
from respublica.serving.gateway.auth import OidcAuthenticator, TenantDirectory
from respublica.serving.gateway.auth.bearer import bearer_token
from respublica.serving.gateway.console import console_router, identity, session
from respublica.serving.gateway.db import Repository, open_database
from respublica.serving.gateway.routing.table import RouteHolder

from .conftest import ADMIN, BASE

ISSUER = "https://sso.agency.example/realms/agency"
AUDIENCE = "respublica-console"
ROLE = "respublica-admin"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class _Jwks(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class Keys:
    good: rsa.RSAPrivateKey
    other: rsa.RSAPrivateKey
    jwks_url: str


@pytest.fixture(scope="module")
def keys() -> Iterator[Keys]:
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(good.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    _Jwks.body = json.dumps({"keys": [jwk]}).encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield Keys(good, other, f"http://127.0.0.1:{port}/realms/agency/protocol/openid-connect/certs")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def token(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "ada",
        "iat": now,
        "exp": now + 300,
        "roles": [ROLE],
    }
    body.update(claims)
    return jwt.encode(
        {k: v for k, v in body.items() if v is not None}, key, algorithm="RS256", headers={"kid": "k1"}
    )


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@dataclass
class Proxied:
    client: httpx.AsyncClient
    repo: Repository


async def _console(
    tmp_path: Path, clock: Clock, keys: Keys | None, claim: str = "roles"
) -> AsyncIterator[Proxied]:
    db = await open_database(f"sqlite:///{tmp_path}/console.db")
    repo = Repository(db)
    verifier = None
    if keys is not None:
        verifier = OidcAuthenticator(
            TenantDirectory(repo), jwks_url=keys.jwks_url, audience=AUDIENCE, issuer=ISSUER
        )
    app = FastAPI()
    app.include_router(
        console_router(
            AdminService(repo, clock=clock),
            RouteHolder(),
            ADMIN,
            clock=clock,
            oidc=verifier,
            oidc_admin_claim=claim,
            oidc_admin_role=ROLE,
        )
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        yield Proxied(client, repo)
    await db.close()


@pytest.fixture
async def proxied(tmp_path: Path, clock: Clock, keys: Keys) -> AsyncIterator[Proxied]:
    async for console in _console(tmp_path, clock, keys):
        yield console


async def test_an_admin_token_opens_a_session_and_is_audited_by_subject(proxied: Proxied, keys: Keys) -> None:
    admin = bearer(token(keys.good))
    page = await proxied.client.get("/console/models", headers=admin)
    assert page.status_code == 200, page.text
    assert "rp_console=" in page.headers["set-cookie"]
    assert "HttpOnly" in page.headers["set-cookie"]
    # The same session on the next request: no new cookie, so the page's CSRF token stays valid.
    tenants = await proxied.client.get("/console/tenants", headers=admin)
    assert "set-cookie" not in tenants.headers
    found = _CSRF.search(tenants.text)
    assert found is not None
    made = await proxied.client.post(
        "/console/tenants", data={"name": "physics", "csrf": found.group(1)}, headers=admin
    )
    assert made.status_code == 201, made.text
    [entry] = [e for e in await proxied.repo.audit_log() if e.target == "physics"]
    assert entry.actor == "oidc:ada"
    # The login page sends a signed-in person on to the console.
    login = await proxied.client.get("/console/login", headers=admin)
    assert (login.status_code, login.headers["location"]) == (303, "/console/models")


async def test_a_token_without_the_role_gets_a_403_page_and_no_session(proxied: Proxied, keys: Keys) -> None:
    for roles in (None, ["viewer"], "viewer editor", ["respublica-administrator"]):
        page = await proxied.client.get("/console/models", headers=bearer(token(keys.good, roles=roles)))
        assert page.status_code == 403, roles
        text = html.unescape(page.text)
        assert f"'{ROLE}' role (claim 'roles')" in text and "signed in as ada" in text
        assert "rp_console=" not in page.headers.get("set-cookie", "")
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert (await proxied.client.get("/console/models")).status_code == 303


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"aud": "some-other-app"}, "not meant for this gateway"),
        ({"iss": "https://evil.example"}, "not issued by"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"sub": None}, "lacks the 'sub' claim"),
    ],
)
async def test_an_invalid_token_gets_a_401_page(
    proxied: Proxied, keys: Keys, claims: dict[str, Any], words: str
) -> None:
    page = await proxied.client.get("/console/models", headers=bearer(token(keys.good, **claims)))
    assert page.status_code == 401
    assert words in html.unescape(page.text)
    assert page.headers["www-authenticate"].startswith("Bearer error=")
    assert "rp_console=" not in page.headers.get("set-cookie", "")


async def test_a_forged_or_garbage_token_gets_a_401(proxied: Proxied, keys: Keys) -> None:
    forged = await proxied.client.get("/console/tenants", headers=bearer(token(keys.other)))
    assert forged.status_code == 401 and "signature does not verify" in forged.text
    garbage = await proxied.client.get("/console/tenants", headers=bearer("not.a.jwt"))
    assert garbage.status_code == 401
    assert "rp_console=" not in garbage.headers.get("set-cookie", "")


async def test_a_bearer_token_does_not_replace_the_csrf_token(proxied: Proxied, keys: Keys) -> None:
    # A form posted from another site through the proxy carries the token but not the session
    # cookie (SameSite=Strict) nor the page's CSRF token: nothing is made.
    admin = bearer(token(keys.good))
    refused = await proxied.client.post(
        "/console/tenants", data={"name": "sneaky", "csrf": "guess"}, headers=admin
    )
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert await proxied.repo.get_tenant("sneaky") is None
    proxied.client.cookies.clear()
    other_site = await proxied.client.post(
        "/console/tenants",
        data={"name": "sneaky"},
        headers={**admin, "Origin": "https://evil.example"},
    )
    assert other_site.status_code == 403
    assert await proxied.repo.get_tenant("sneaky") is None


async def test_a_role_taken_away_locks_out_an_open_session(proxied: Proxied, keys: Keys) -> None:
    assert (await proxied.client.get("/console/models", headers=bearer(token(keys.good)))).status_code == 200
    assert (await proxied.client.get("/console/models")).status_code == 200  # the cookie alone
    revoked = await proxied.client.get("/console/models", headers=bearer(token(keys.good, roles=[])))
    assert revoked.status_code == 403


async def test_another_subject_gets_its_own_session(proxied: Proxied, keys: Keys) -> None:
    await proxied.client.get("/console/models", headers=bearer(token(keys.good)))
    grace = await proxied.client.get("/console/models", headers=bearer(token(keys.good, sub="grace")))
    assert grace.status_code == 200
    assert "rp_console=" in grace.headers["set-cookie"]  # not ada's session, a new one
    found = _CSRF.search(grace.text)
    assert found is not None
    made = await proxied.client.post(
        "/console/tenants",
        data={"name": "chem", "csrf": found.group(1)},
        headers=bearer(token(keys.good, sub="grace")),
    )
    assert made.status_code == 201
    assert [e.actor for e in await proxied.repo.audit_log() if e.target == "chem"] == ["oidc:grace"]


async def test_keycloak_realm_roles_by_dotted_path(tmp_path: Path, clock: Clock, keys: Keys) -> None:
    async for console in _console(tmp_path, clock, keys, claim="realm_access.roles"):
        keycloak = token(keys.good, roles=None, realm_access={"roles": ["offline_access", ROLE]})
        assert (await console.client.get("/console/models", headers=bearer(keycloak))).status_code == 200
        top_level_only = token(keys.good)  # `roles` at the top is not where this console looks
        denied = await console.client.get("/console/models", headers=bearer(top_level_only))
        assert denied.status_code == 403


async def test_without_oidc_a_bearer_token_is_not_a_credential(
    tmp_path: Path, clock: Clock, keys: Keys
) -> None:
    async for console in _console(tmp_path, clock, None):
        page = await console.client.get("/console/models", headers=bearer(token(keys.good)))
        assert (page.status_code, page.headers["location"]) == (303, "/console/login")


async def test_the_admin_key_login_still_audits_the_client_address(proxied: Proxied) -> None:
    login = await proxied.client.get("/console/login")
    found = re.search(r'name="login_csrf" value="([^"]+)"', login.text)
    assert found is not None
    done = await proxied.client.post(
        "/console/login", data={"admin_key": ADMIN, "login_csrf": found.group(1)}
    )
    assert done.status_code == 303
    page = await proxied.client.get("/console/tenants")
    csrf = _CSRF.search(page.text)
    assert csrf is not None
    await proxied.client.post("/console/tenants", data={"name": "bio", "csrf": csrf.group(1)})
    [entry] = [e for e in await proxied.repo.audit_log() if e.target == "bio"]
    assert entry.actor.startswith("console@")


def test_roles_in_the_shapes_providers_emit() -> None:
    assert identity.roles_of(["a", ROLE, 3]) == {"a", ROLE}
    assert identity.roles_of(f"a {ROLE},b") == {"a", ROLE, "b"}
    assert identity.roles_of({"role": ROLE}) == frozenset()
    assert identity.roles_of(None) == frozenset()
    claims = {"realm_access": {"roles": [ROLE]}, "roles": "x"}
    assert identity.has_admin_role(claims, "realm_access.roles", ROLE)
    assert not identity.has_admin_role(claims, "roles", ROLE)
    assert not identity.has_admin_role(claims, "realm_access.roles.deeper", ROLE)
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None


def test_the_session_cookie_carries_its_actor_and_refuses_tampering() -> None:
    key = session.session_key(ADMIN)
    opened, cookie = session.issue(key, 1000.0, 60, actor="oidc:ada.lovelace@agency")
    assert session.read(key, cookie, 1001.0) == opened
    assert opened.actor == "oidc:ada.lovelace@agency"
    head, _, signature = cookie.rpartition(".")
    version, expiry, csrf, _actor = head.split(".")
    swapped = ".".join([version, expiry, csrf, "b2lkYzpldmU"])  # "oidc:eve", old signature
    assert session.read(key, f"{swapped}.{signature}", 1001.0) is None
    assert session.read(key, cookie, 1061.0) is None  # expired
    keyed, cookie = session.issue(key, 1000.0, 60)
    assert session.read(key, cookie, 1001.0) == keyed and keyed.actor is None
    with pytest.raises(ValueError, match="actor"):
        session.issue(key, 1000.0, 60, actor="x" * (session.MAX_ACTOR + 1))
