"""The one reading of an `Authorization: Bearer <credential>` header, for the API (an API key or an
OIDC token), the admin API (the admin key) and the console (a proxy-passed OIDC token)."""

from __future__ import annotations


def bearer_token(header: str | None) -> str | None:
    """The credential of a Bearer header (scheme case-insensitive, spaces trimmed), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
