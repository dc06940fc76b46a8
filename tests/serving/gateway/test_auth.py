"""Authentication: API keys from the database, OIDC JWTs against a JWKS file or URL, never logged."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from respublica.serving.gateway.auth import (
    ApiKeyAuthenticator,
    GatewayAuthenticator,
    OidcAuthenticator,
    TenantDirectory,
    generate_key,
)
from respublica.serving.gateway.contracts import AuthError, Limits, Principal
from respublica.serving.gateway.db import Repository, open_database

ISSUER = "https://sso.example.org/realms/agency"
AUDIENCE = "respublica"


@pytest.fixture
async def sqlite_repo(tmp_path: Path) -> AsyncIterator[Repository]:
    db = await open_database(f"sqlite:///{tmp_path}/auth.db")
    yield Repository(db)
    await db.close()


@pytest.fixture(autouse=True)
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Capture every log line of the test at DEBUG; tests add the secrets that must not appear."""
    secrets: list[str] = []
    with caplog.at_level(logging.DEBUG):
        yield secrets
    for secret in secrets:
        assert secret not in caplog.text, "a credential appeared in the logs"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def signing() -> dict[str, Any]:
    good, other = _rsa(), _rsa()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(good.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    return {"good": good, "other": other, "jwks": {"keys": [jwk]}}


def token(key: rsa.RSAPrivateKey, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-42", "tenant": "acme", "iat": now, "exp": now + 300}
    body.update(claims)
    return jwt.encode(
        {k: v for k, v in body.items() if v is not None}, key, algorithm="RS256", headers={"kid": kid}
    )


async def make_auth(
    repo: Repository,
    tmp_path: Path,
    signing: dict[str, Any],
    ttl_s: float = 0.0,
    declared: dict[str, Limits] | None = None,
) -> GatewayAuthenticator:
    tenants = TenantDirectory(repo, declared, ttl_s=ttl_s)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(signing["jwks"]))
    oidc = OidcAuthenticator(tenants, jwks_file=jwks, audience=AUDIENCE, issuer=ISSUER)
    return GatewayAuthenticator(ApiKeyAuthenticator(repo, tenants, ttl_s=ttl_s), oidc)


async def failure(auth: GatewayAuthenticator, header: str | None) -> AuthError:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(header)
    return info.value


async def test_api_keys(
    sqlite_repo: Repository, tmp_path: Path, signing: dict[str, Any], everything_logged: list[str]
) -> None:
    repo = sqlite_repo
    await repo.create_tenant("acme", Limits(tokens_per_day=1000))
    good, revoked, expired, orphan = (generate_key() for _ in range(4))
    everything_logged += [k.key for k in (good, revoked, expired, orphan)]
    # The secret part: everything after `rp_<16 hex>_` (it may hold '_' itself).
    everything_logged += [k.key[len("rp_") + 16 + 1 :] for k in (good, revoked, expired, orphan)]
    await repo.create_key(good.key_id, "acme", good.secret_hash, limits=Limits(requests_per_minute=5))
    await repo.create_key(revoked.key_id, "acme", revoked.secret_hash)
    await repo.revoke_key(revoked.key_id)
    await repo.create_key(expired.key_id, "acme", expired.secret_hash, expires_at=time.time() - 1)
    await repo.create_key(orphan.key_id, "gone", orphan.secret_hash)
    auth = await make_auth(repo, tmp_path, signing)

    principal = await auth.authenticate(f"Bearer {good.key}")
    assert principal == Principal(
        "acme", good.key_id, Limits(tokens_per_day=1000), Limits(requests_per_minute=5)
    )

    cases: list[tuple[str | None, int, str, str]] = [
        (None, 401, "missing_api_key", "no credential"),
        ("Basic abc", 401, "invalid_authorization", "Bearer"),
        ("Bearer rp_nonsense", 401, "invalid_api_key", "malformed API key"),
        (f"Bearer {generate_key().key}", 401, "invalid_api_key", "incorrect API key"),
        (f"Bearer rp_{good.key_id}_{generate_key().key[-43:]}", 401, "invalid_api_key", "incorrect API key"),
        (f"Bearer {revoked.key}", 401, "key_revoked", "has been revoked"),
        (f"Bearer {expired.key}", 401, "key_expired", "expired"),
        (f"Bearer {orphan.key}", 403, "unknown_tenant", "tenant 'gone', which does not exist"),
        ("Bearer sk-openai-key", 401, "invalid_api_key", "incorrect credential"),
    ]
    for header, status, code, words in cases:
        error = await failure(auth, header)
        assert (error.status, error.code) == (status, code), header
        assert words in error.message
        for secret in everything_logged:
            assert secret not in error.message


async def test_revocation_is_seen_within_the_cache_ttl(
    sqlite_repo: Repository, tmp_path: Path, signing: dict[str, Any], everything_logged: list[str]
) -> None:
    await sqlite_repo.create_tenant("acme", Limits())
    key = generate_key()
    everything_logged.append(key.key)
    await sqlite_repo.create_key(key.key_id, "acme", key.secret_hash)
    cached = await make_auth(sqlite_repo, tmp_path, signing, ttl_s=0.3)
    uncached = await make_auth(sqlite_repo, tmp_path, signing, ttl_s=0.0)
    await cached.authenticate(f"Bearer {key.key}")
    await sqlite_repo.revoke_key(key.key_id)  # by another process: the admin CLI
    assert (await failure(uncached, f"Bearer {key.key}")).code == "key_revoked"
    await cached.authenticate(f"Bearer {key.key}")  # still cached
    await asyncio.sleep(0.35)
    assert (await failure(cached, f"Bearer {key.key}")).code == "key_revoked"


async def test_tenants_file_wins_over_the_database(
    sqlite_repo: Repository, tmp_path: Path, signing: dict[str, Any]
) -> None:
    await sqlite_repo.create_tenant("acme", Limits(tokens_per_day=1))
    key = generate_key()
    await sqlite_repo.create_key(key.key_id, "acme", key.secret_hash)
    auth = await make_auth(sqlite_repo, tmp_path, signing, declared={"acme": Limits(tokens_per_day=99)})
    assert (await auth.authenticate(f"Bearer {key.key}")).tenant_limits == Limits(tokens_per_day=99)


async def test_oidc_tokens(
    sqlite_repo: Repository, tmp_path: Path, signing: dict[str, Any], everything_logged: list[str]
) -> None:
    await sqlite_repo.create_tenant("acme", Limits(max_concurrent=3))
    auth = await make_auth(sqlite_repo, tmp_path, signing)
    good = signing["good"]
    valid = token(good)
    everything_logged.append(valid)
    principal = await auth.authenticate(f"Bearer {valid}")
    assert principal == Principal("acme", "user-42", Limits(max_concurrent=3), None, via="oidc")

    cases = [
        (token(good, exp=int(time.time()) - 120), 401, "token_expired", "has expired"),
        (token(signing["other"]), 401, "invalid_token", "signature does not verify"),
        (token(good, aud="someone-else"), 401, "invalid_token", "audience must be 'respublica'"),
        (token(good, iss="https://evil.example"), 401, "invalid_token", f"not issued by '{ISSUER}'"),
        (token(good, kid="k9"), 401, "invalid_token", "key id (kid)"),
        (token(good, sub=None), 401, "invalid_token", "lacks the 'sub' claim"),
        (token(good, tenant=None), 403, "unknown_tenant", "no 'tenant' claim"),
        (token(good, tenant="nobody"), 403, "unknown_tenant", "tenant 'nobody'"),
        (
            jwt.encode(
                {"sub": "x", "tenant": "acme", "exp": int(time.time()) + 60},
                None,
                algorithm="none",
                headers={"kid": "k1"},
            ),
            401,
            "invalid_token",
            "algorithm",
        ),
        (valid[:-4] + "AAAA", 401, "invalid_token", "signature"),
    ]
    for bad, status, code, words in cases:
        everything_logged.append(bad)
        error = await failure(auth, f"Bearer {bad}")
        assert (error.status, error.code) == (status, code), words
        assert words in error.message, error.message
        assert bad not in error.message


class _JwksHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_oidc_jwks_from_a_url(sqlite_repo: Repository, signing: dict[str, Any]) -> None:
    await sqlite_repo.create_tenant("acme", Limits())
    _JwksHandler.body = json.dumps(signing["jwks"]).encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/realms/agency/protocol/openid-connect/certs"
        tenants = TenantDirectory(sqlite_repo, ttl_s=0)
        auth = GatewayAuthenticator(
            None, OidcAuthenticator(tenants, jwks_url=url, audience=AUDIENCE, tenant_claim="org.tenant")
        )
        principal = await auth.authenticate(
            f"Bearer {token(signing['good'], org={'tenant': 'acme'}, iss=None)}"
        )
        assert (principal.tenant, principal.subject) == ("acme", "user-42")
        await auth.authenticate(f"Bearer {token(signing['good'], org={'tenant': 'acme'})}")
        assert _JwksHandler.hits == 1  # the key set is cached
        error = await failure(auth, f"Bearer {token(signing['good'])}")  # tenant not under org.tenant
        assert error.status == 403
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_oidc_jwks_url_down_is_503(sqlite_repo: Repository, signing: dict[str, Any]) -> None:
    auth = GatewayAuthenticator(
        None, OidcAuthenticator(TenantDirectory(sqlite_repo), jwks_url="http://127.0.0.1:9/jwks")
    )
    error = await failure(auth, f"Bearer {token(signing['good'])}")
    assert (error.status, error.code) == (503, "auth_unavailable")
