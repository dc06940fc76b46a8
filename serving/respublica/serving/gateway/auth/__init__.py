"""Who is calling: API keys (`rp_...`) from the database, OIDC bearer JWTs, tenants from file and DB.

Nothing here logs a key, a secret or a token; messages name a key by its id at most.
"""

from __future__ import annotations

from respublica.serving.gateway.auth.api_keys import ApiKeyAuthenticator
from respublica.serving.gateway.auth.bearer import bearer_token
from respublica.serving.gateway.auth.keys import generate_key, looks_like_key
from respublica.serving.gateway.auth.oidc import OidcAuthenticator
from respublica.serving.gateway.auth.tenants import TenantDirectory
from respublica.serving.gateway.contracts import AuthError, Principal

__all__ = [
    "ApiKeyAuthenticator",
    "GatewayAuthenticator",
    "OidcAuthenticator",
    "TenantDirectory",
    "generate_key",
]


class GatewayAuthenticator:
    """The `Authenticator`: `Authorization: Bearer rp_...` is an API key, any other bearer a JWT."""

    def __init__(self, keys: ApiKeyAuthenticator | None, oidc: OidcAuthenticator | None = None) -> None:
        self.keys = keys
        self.oidc = oidc

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.strip():
            raise AuthError(
                401, "missing_api_key", "no credential: send 'Authorization: Bearer <API key or token>'"
            )
        credential = bearer_token(authorization)
        if credential is None:
            raise AuthError(
                401, "invalid_authorization", "expected 'Authorization: Bearer <API key or token>'"
            )
        if looks_like_key(credential) and self.keys is not None:
            return await self.keys.authenticate_key(credential)
        if self.oidc is not None and credential.count(".") == 2:
            return await self.oidc.authenticate_token(credential)
        accepted = "an API key (rp_...)" + (" or an OIDC bearer token" if self.oidc else "")
        raise AuthError(401, "invalid_api_key", f"incorrect credential: this gateway accepts {accepted}")
