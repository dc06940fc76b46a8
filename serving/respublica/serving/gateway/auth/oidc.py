"""OIDC bearer tokens (e.g. from Keycloak): JWTs verified against the identity provider's JWKS.

The JWKS comes from a file (read once at start) or a URL (fetched by PyJWT's client in a thread,
cached for `jwks_cache_s`, fetched again when a token names an unknown key id, so key rotation
works). Audience and issuer are checked: the gateway's settings refuse a JWKS without both
(otherwise any token the provider signs for any other application would pass), and this class
checks the ones it is given. `exp` and `sub` are required. The tenant is read from a
configurable claim (a dotted path reaches into nested claims).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt

from respublica.serving.gateway.auth.tenants import TenantDirectory
from respublica.serving.gateway.contracts import AuthError, Principal
from respublica.serving.gateway.db.base import DatabaseError


def _invalid(message: str, code: str = "invalid_token") -> AuthError:
    return AuthError(401, code, message)


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (`realm_access.roles`), or None where any step is missing."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class OidcAuthenticator:
    def __init__(
        self,
        tenants: TenantDirectory,
        *,
        jwks_file: Path | None = None,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        tenant_claim: str = "tenant",
        algorithms: Sequence[str] = ("RS256", "ES256"),
        leeway_s: float = 30.0,
        jwks_cache_s: int = 300,
    ) -> None:
        if (jwks_file is None) == (jwks_url is None):
            raise ValueError("OIDC needs exactly one of jwks_file and jwks_url")
        self.tenants = tenants
        self.audience = audience
        self.issuer = issuer
        self.tenant_claim = tenant_claim
        self.algorithms = list(algorithms)
        self.leeway_s = leeway_s
        self._keys: jwt.PyJWKSet | None = None
        self._client: jwt.PyJWKClient | None = None
        if jwks_file is not None:
            try:
                self._keys = jwt.PyJWKSet.from_json(jwks_file.read_text())
            except (OSError, jwt.PyJWKError, ValueError) as exc:
                raise ValueError(f"{jwks_file}: not a readable JWKS: {exc}") from None
        else:
            self._client = jwt.PyJWKClient(
                str(jwks_url), cache_jwk_set=True, lifespan=jwks_cache_s, timeout=10
            )

    async def _signing_key(self, token: str) -> Any:
        if self._client is not None:
            try:
                return (await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)).key
            except jwt.PyJWKClientConnectionError:
                raise AuthError(
                    503, "auth_unavailable", "the identity provider's keys (JWKS) are unreachable"
                ) from None
            except jwt.PyJWKClientError:
                raise _invalid(
                    "no key of the identity provider matches the bearer token's key id (kid)"
                ) from None
        assert self._keys is not None
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None:
            if len(self._keys.keys) == 1:
                return self._keys.keys[0].key
            raise _invalid("the bearer token names no key id (kid)")
        try:
            return self._keys[kid].key
        except KeyError:
            raise _invalid(
                "no key of the identity provider matches the bearer token's key id (kid)"
            ) from None

    async def claims(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature, issuer, audience and expiry verify; else AuthError.

        The console (console/identity.py) reads its admin role claim from these.
        """
        try:
            key = await self._signing_key(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("the bearer token has expired", "token_expired") from None
        except jwt.InvalidAudienceError:
            raise _invalid(
                f"the bearer token is not meant for this gateway (audience must be '{self.audience}')"
            ) from None
        except jwt.InvalidIssuerError:
            raise _invalid(f"the bearer token was not issued by '{self.issuer}'") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the bearer token's signature does not verify") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("the bearer token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the bearer token lacks the '{exc.claim}' claim") from None
        except jwt.InvalidAlgorithmError:
            raise _invalid(
                f"the bearer token's algorithm is not one of {', '.join(self.algorithms)}"
            ) from None
        except jwt.InvalidTokenError:
            raise _invalid("the bearer token is malformed") from None
        return claims

    async def authenticate_token(self, token: str) -> Principal:
        claims = await self.claims(token)
        tenant = claim_at(claims, self.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise AuthError(
                403, "unknown_tenant", f"the bearer token has no '{self.tenant_claim}' claim naming a tenant"
            )
        try:
            limits = await self.tenants.limits(tenant)
        except DatabaseError:
            raise AuthError(
                503, "auth_unavailable", "the tenant database is unreachable; retry shortly"
            ) from None
        if limits is None:
            raise AuthError(
                403, "unknown_tenant", f"tenant '{tenant}' named by the bearer token does not exist"
            )
        return Principal(tenant=tenant, subject=str(claims["sub"]), tenant_limits=limits, via="oidc")
