"""Console sessions: a signed cookie, no server-side store, so every worker and a restart accept it.

The cookie is `v2.<expiry>.<csrf>.<actor>.<signature>`: HMAC-SHA256 over the rest, with a key
derived from the admin key (so rotating the admin key ends every session). `actor` (base64url) is
who the audit log names for the session's changes: empty for the admin key (the log then names the
client address), `oidc:<sub>` for a session opened by an OIDC token (identity.py). A `v1` cookie
(no actor) from before still reads. `csrf` is a random per-session token
that every form of the console posts back and `check_csrf` compares in constant time; it also
names the session for logout, which this process remembers until the session would expire.

The login form has its own CSRF token (double submit: a short-lived cookie and a hidden field,
both random) so no one can log a browser in to a session of their choosing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

SESSION_COOKIE = "rp_console"
LOGIN_COOKIE = "rp_console_login"
COOKIE_PATH = "/console"
_VERSION = "v2"
_V1 = "v1"
MAX_ACTOR = 256


def session_key(admin_key: str) -> bytes:
    """The signing key: derived from the admin key, never the admin key itself."""
    return hmac.new(admin_key.encode(), b"respublica console session v1", hashlib.sha256).digest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Session:
    expires_at: int
    csrf: str
    actor: str | None = None  # None: the admin key


def _sign(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def _encode_actor(actor: str | None) -> str:
    return base64.urlsafe_b64encode(actor.encode()).decode().rstrip("=") if actor else ""


def _decode_actor(text: str) -> str | None:
    if not text:
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def issue(key: bytes, now: float, ttl_s: float, actor: str | None = None) -> tuple[Session, str]:
    """A new session and its cookie value; `actor` is who the audit log names (None: the admin key)."""
    if actor is not None and not 0 < len(actor) <= MAX_ACTOR:
        raise ValueError(f"a session's actor is 1 to {MAX_ACTOR} characters")
    session = Session(int(now + ttl_s), new_token(), actor)
    payload = f"{_VERSION}.{session.expires_at}.{session.csrf}.{_encode_actor(actor)}"
    return session, f"{payload}.{_sign(key, payload)}"


def read(key: bytes, cookie: str | None, now: float) -> Session | None:
    """The session a cookie holds, or None: absent, malformed, forged or expired."""
    if not cookie or len(cookie) > 1024:
        return None
    payload, _, signature = cookie.rpartition(".")
    if not hmac.compare_digest(signature.encode(), _sign(key, payload).encode()):
        return None
    version, _, rest = payload.partition(".")
    expiry, _, rest = rest.partition(".")
    csrf, _, encoded_actor = rest.partition(".")
    if version not in (_VERSION, _V1) or not expiry.isdigit() or not csrf:
        return None
    actor = _decode_actor(encoded_actor) if version == _VERSION else None
    if encoded_actor and actor is None:
        return None
    session = Session(int(expiry), csrf, actor)
    return session if session.expires_at > now else None


def check_csrf(expected: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(expected.encode(), (sent or "").encode())


def cookie_header(name: str, value: str, *, max_age: int, secure: bool) -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Strict, scoped to the console; Secure when asked."""
    parts = [f"{name}={value}", f"Path={COOKIE_PATH}", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
