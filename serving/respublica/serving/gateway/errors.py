"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

Messages name what is wrong and what to do; they never echo a key, a token or prompt text.
"""

from __future__ import annotations

import math

from respublica.serving.gateway import jsoncodec
from respublica.serving.gateway.contracts import RateHeaders

# OpenAI's `type` for each status the gateway answers with.
_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class GatewayError(Exception):
    """An error the gateway answers with; `code` is a stable machine-readable reason."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or []

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error")

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return jsoncodec.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _duration(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `1h2m3s`, `250ms`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_limit_headers(rate: RateHeaders) -> list[tuple[bytes, bytes]]:
    """OpenAI's `x-ratelimit-*` headers for what the quota store reported."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in (
        (b"x-ratelimit-limit-requests", rate.limit_requests),
        (b"x-ratelimit-remaining-requests", rate.remaining_requests),
        (b"x-ratelimit-limit-tokens", rate.limit_tokens),
        (b"x-ratelimit-remaining-tokens", rate.remaining_tokens),
    ):
        if value is not None:
            out.append((name, str(max(0, value)).encode()))
    for name, reset in (
        (b"x-ratelimit-reset-requests", rate.reset_requests_s),
        (b"x-ratelimit-reset-tokens", rate.reset_tokens_s),
    ):
        if reset is not None:
            out.append((name, _duration(reset).encode()))
    return out


def retry_after(seconds: float) -> tuple[bytes, bytes]:
    return (b"retry-after", str(max(1, math.ceil(seconds))).encode())
