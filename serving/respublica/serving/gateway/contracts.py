"""The seams of the gateway's request path: who is calling, how much they may spend, what it cost.

The request path is `authenticate -> route and plan -> admit (reserve) -> proxy -> settle ->
observe (span, metrics, ledger)`. Routing and planning (routes/plan.py: the route, the access rule,
the output cap, the reservation size) come before admission on purpose: a request for a model
that does not exist, that the caller may not use or that can not serve now, or with an invalid
body, is answered without reserving tokens, taking a concurrency slot, counting against the
requests per minute or a round trip to the quota store, and the reservation's size depends on the
plan (the cap and the body). What a refusal reveals is the same either way: 404 for a name no route
serves and the same 404 for one the caller may not use, before readiness (503) is looked at.

The HTTP side (app, routes, proxy, routing, telemetry) talks to the policy side (auth, quota stores,
database, ledger) only through these types, so either side can change without the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

# Priority classes of fair sharing, highest first: a waiting `interactive` request goes before any
# waiting `batch` one; within a class the tenant with the least weighted service goes first.
Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")

RejectReason = Literal[
    "requests_per_minute",
    "tokens_per_minute",
    "tokens_per_day",
    "tokens_per_month",
    "concurrency",
    "store_unavailable",
]


@dataclass(frozen=True)
class Limits:
    """Spending limits; None means unlimited. Tenants have them; a key may narrow them."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    max_concurrent: int | None = None
    allowed_models: tuple[str, ...] = ("*",)
    # The output cap written upstream where a client sets none; None inherits (key -> tenant ->
    # the gateway's `default_max_tokens` setting).
    default_max_tokens: int | None = None
    # Fair sharing under saturation (fairness/): the tenant's share of a saturated model relative
    # to others (None: 1), and the class its requests wait in; a key's priority overrides its
    # tenant's. Weight is the tenant's only: fairness is between tenants.
    fair_share_weight: float | None = None
    priority: Priority | None = None
    max_queued: int | None = None  # requests waiting per model at once; None: the gateway's setting


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    tenant: str
    subject: str  # the key id (never the key) or the OIDC subject: what the ledger records
    tenant_limits: Limits
    key_limits: Limits | None = None  # per-key overrides, enforced on top of the tenant's
    via: Literal["key", "oidc"] = "key"

    def allows_model(self, model: str) -> bool:
        for limits in (self.tenant_limits, self.key_limits):
            if limits is not None and "*" not in limits.allowed_models and model not in limits.allowed_models:
                return False
        return True

    @property
    def default_max_tokens(self) -> int | None:
        """The key's cap, else the tenant's; None: the gateway's setting applies."""
        if self.key_limits is not None and self.key_limits.default_max_tokens is not None:
            return self.key_limits.default_max_tokens
        return self.tenant_limits.default_max_tokens

    @property
    def priority(self) -> Priority:
        """The key's class, else the tenant's, else `interactive` (every tenant equal by default)."""
        if self.key_limits is not None and self.key_limits.priority is not None:
            return self.key_limits.priority
        return self.tenant_limits.priority or "interactive"


class AuthError(Exception):
    """Authentication failed; `status` is 401 (no or bad credential) or 403."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Authenticator(Protocol):
    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an `Authorization` header, or AuthError."""
        ...


@dataclass(frozen=True)
class Reservation:
    """Tokens held for one request until it is settled or its lease runs out."""

    id: str
    tenant: str
    subject: str
    tokens: int
    expires_at: float


@dataclass(frozen=True)
class RateHeaders:
    """What OpenAI's `x-ratelimit-*` headers report after an admission or a rejection."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True)
class Admission:
    reservation: Reservation
    headers: RateHeaders = field(default_factory=RateHeaders)


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    message: str
    retry_after_s: float
    headers: RateHeaders = field(default_factory=RateHeaders)


class QuotaStore(Protocol):
    """Reserve-then-settle accounting; in-process or Redis, same semantics."""

    async def admit(self, principal: Principal, tokens: int) -> Admission | Rejection:
        """Reserve `tokens` (an upper bound of the request's cost) and one concurrency slot."""
        ...

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Charge what was used, release the rest and the concurrency slot. Idempotent. A lease that
        ran out before its settlement has freed its slot but kept its hold: settling it late still
        charges exactly what was used. It completes even if its caller is cancelled while it runs
        (a store that awaits shields its own work): a server shutting down cancels the requests
        still settling, and their usage must be charged all the same."""
        ...

    async def extend(self, reservations: Sequence[Reservation]) -> None:
        """Renew the leases of these reservations (requests still in flight) for a full lease."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class UsageRecord:
    """One ledger line per request. Never holds prompt or completion text."""

    request_id: str
    started_at: float  # unix seconds
    tenant: str
    subject: str
    model: str
    endpoint: str
    input_tokens: int
    output_tokens: int
    latency_ms: float
    ttft_ms: float | None
    status: int
    error_type: str | None = None
    stream: bool = False
    # Why the tokens are what they are: `usage` the model reported them; `bound` a stream that
    # never reported usage, charged the prompt's bound and a bound of what was streamed;
    # `reservation` the model may have run and said nothing (timeout, broken answer, client gone
    # before a unary answer): everything reserved was charged.
    charge: str = "usage"


class Ledger(Protocol):
    def record(self, record: UsageRecord) -> None:
        """Queue a record; written in batches, never blocks the request."""
        ...

    async def flush(self) -> None: ...

    async def close(self) -> None:
        """Flush what is queued and stop."""
        ...
