"""Who an OIDC bearer token names, and whether it holds the console's admin role: pure functions.

An authenticating proxy in front of the console (oauth2-proxy with `--pass-authorization-header`,
Keycloak's gatekeeper, ...) logs the person in with the identity provider and passes their token
on every request as `Authorization: Bearer <JWT>`. The console verifies that token with the
gateway's own OIDC verifier (auth/oidc.py: signature against the JWKS, issuer, audience, expiry)
and admits it only when a configurable claim holds the admin role.

Role claims come in the shapes identity providers emit them: a JSON list (`roles`, Keycloak's
`realm_access.roles`, Azure AD's `roles`), or one string of space- or comma-separated values
(`scope`-like claims, some `groups` mappers). A dotted path reaches into nested claims.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

from respublica.serving.gateway.auth.oidc import claim_at

_SEPARATORS = re.compile(r"[\s,]+")


class ClaimsVerifier(Protocol):
    """What the console needs from auth/oidc.py's OidcAuthenticator: verified claims or AuthError."""

    async def claims(self, token: str) -> dict[str, Any]: ...


def roles_of(value: Any) -> frozenset[str]:
    """The roles a claim value lists: a list of strings, or a space/comma-separated string."""
    if isinstance(value, str):
        return frozenset(r for r in _SEPARATORS.split(value) if r)
    if isinstance(value, list | tuple):
        return frozenset(r for r in value if isinstance(r, str) and r)
    return frozenset()


def has_admin_role(claims: Mapping[str, Any], claim_path: str, role: str) -> bool:
    return role in roles_of(claim_at(claims, claim_path))


def actor_of(claims: Mapping[str, Any]) -> str:
    """The audit log's actor for a token: `oidc:<sub>` (the verifier requires `sub`)."""
    return f"oidc:{claims['sub']}"
