"""Authenticating `rp_...` keys against the database, with a short cache on the hot path.

A key row is cached for `ttl_s` (default 5 s) after it is read, found or not, so a request does
not cost a database query; a revocation or an expiry set through another process is therefore
seen within `ttl_s`. (Changes made through this process's admin API are seen at once.) Set
`ttl_s=0` to read the database on every request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from respublica.serving.gateway.auth.cache import TtlCache
from respublica.serving.gateway.auth.keys import parse_key, secret_matches
from respublica.serving.gateway.auth.tenants import TenantDirectory
from respublica.serving.gateway.contracts import AuthError, Principal
from respublica.serving.gateway.db.base import DatabaseError
from respublica.serving.gateway.db.repo import KeyRow, Repository


def _unavailable() -> AuthError:
    return AuthError(503, "auth_unavailable", "the key database is unreachable; retry shortly")


class ApiKeyAuthenticator:
    def __init__(
        self,
        repo: Repository,
        tenants: TenantDirectory,
        *,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.tenants = tenants
        self._clock = clock
        self._cache: TtlCache[str, KeyRow | None] = TtlCache(ttl_s)

    def forget(self, key_id: str) -> None:
        """Drop a cached key (this process revoked or changed it)."""
        self._cache.discard(key_id)

    async def _row(self, key_id: str) -> KeyRow | None:
        try:
            return await self._cache.get_or_load(key_id, lambda: self.repo.get_key(key_id))
        except DatabaseError:
            raise _unavailable() from None

    async def authenticate_key(self, token: str) -> Principal:
        parsed = parse_key(token)
        if parsed is None:
            raise AuthError(401, "invalid_api_key", "malformed API key: expected 'rp_<key id>_<secret>'")
        key_id, secret = parsed
        row = await self._row(key_id)
        if row is None or not secret_matches(key_id, secret, row.secret_hash):
            raise AuthError(401, "invalid_api_key", "incorrect API key provided")
        if row.revoked_at is not None:
            raise AuthError(401, "key_revoked", f"API key '{key_id}' has been revoked")
        if row.expires_at is not None and row.expires_at <= self._clock():
            raise AuthError(401, "key_expired", f"API key '{key_id}' expired; ask for a new one")
        try:
            limits = await self.tenants.limits(row.tenant)
        except DatabaseError:
            raise _unavailable() from None
        if limits is None:
            raise AuthError(
                403,
                "unknown_tenant",
                f"API key '{key_id}' belongs to tenant '{row.tenant}', which does not exist",
            )
        return Principal(
            tenant=row.tenant, subject=key_id, tenant_limits=limits, key_limits=row.limits, via="key"
        )
