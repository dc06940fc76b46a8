"""API keys: `rp_<key id>_<secret>`, random, shown once, stored only as a hash.

The secret is 256 random bits, so a fast hash is enough: no password-style stretching is needed
to make guessing infeasible. The hash binds the key id (sha256 of `id:secret`), so a hash can
not be moved to another key row. The key id is not secret; it is what logs and the ledger show.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "rp"
_KEY = re.compile(r"^rp_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret_hash: str
    key: str  # the whole key: given to the caller once, never stored


def hash_secret(key_id: str, secret: str) -> str:
    return hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()


def generate_key() -> NewKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)  # 43 characters of the URL-safe alphabet
    return NewKey(key_id, hash_secret(key_id, secret), f"{PREFIX}_{key_id}_{secret}")


def parse_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _KEY.match(key)
    return (match.group(1), match.group(2)) if match else None


def looks_like_key(token: str) -> bool:
    return token.startswith(f"{PREFIX}_")


def secret_matches(key_id: str, secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(key_id, secret), stored_hash)
