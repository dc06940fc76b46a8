"""Every admin use case, once: tenants and their limits, API keys, usage reports, the audit log.

Two surfaces call it and do nothing else than parse input and format output: the HTTP routes
under `/admin` (`gateway/admin.py`) and the `respublica tenants|keys|usage` commands
(`respublica.cli.admin`). Each use case validates its whole input first, so a bad value is
refused with a clear error before anything is written; then it writes, then it records one audit
entry.

Audit payloads (`detail` in the audit log) are camelCase, like the limits of the HTTP API, the
tenants file and the ModelDeployment API: `{"limits": {"tokensPerDay": 1000, ...}}`,
`{"revokedKeys": [...]}`, `{"tenant", "name", "expiresAt", "limits"}`. They are built only here,
from the typed models below, so the two surfaces can not drift apart again. They never hold a key
or a secret.

Failures are `AdminFailure`s: `InvalidInput` (HTTP 400, CLI exit 2), `NotFound` (404, exit 1) and
`Conflict` (409, exit 1). An unreachable database raises `DatabaseError`, untouched.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from respublica.api.load import describe
from respublica.serving.gateway.auth.keys import NewKey, generate_key, parse_key
from respublica.serving.gateway.contracts import Limits
from respublica.serving.gateway.db.codec import (
    TENANT_NAME_HELP,
    LimitsModel,
    format_instant,
    is_tenant_name,
    parse_instant,
)
from respublica.serving.gateway.db.repo import AuditEntry, KeyRow, Repository, SpendTotal, UsageTotal
from respublica.serving.gateway.quota.arithmetic import day_start, month_start

# The actions written to the audit log.
TENANT_CREATE: Final = "tenant.create"
TENANT_SET_LIMITS: Final = "tenant.set_limits"
TENANT_DELETE: Final = "tenant.delete"
KEY_CREATE: Final = "key.create"
KEY_REVOKE: Final = "key.revoke"

KEY_NAME_MAX = 200
# A key lives at most about a century. Beyond that an expiry is a mistake (unix milliseconds
# given for seconds, 1e300) and, past year 9999, one no date type can hold: such a value used to
# be saved and then break every listing of keys.
KEY_LIFETIME_MAX_S = 100 * 365.25 * 86400
# The last second every date type (Python's datetime, PostgreSQL's, ISO 8601) can represent.
INSTANT_MAX = 253_402_300_799.0  # 9999-12-31T23:59:59Z
_KEY_ID = re.compile(r"[0-9a-f]{16}")


# -- failures -----------------------------------------------------------------------------------
class AdminFailure(Exception):
    """A use case refused: `code` is stable (the HTTP error code), `param` names the bad input."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


class InvalidInput(AdminFailure):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__("invalid_request", message, param)


class NotFound(AdminFailure):
    """The tenant or key named does not exist."""


class Conflict(AdminFailure):
    """It exists already, was revoked already, or belongs to the tenants file."""


# -- typed inputs and outputs -------------------------------------------------------------------
@dataclass(frozen=True)
class TenantView:
    name: str
    source: Literal["file", "database"]
    limits: Limits
    created_at: float | None = None  # None for a tenant of the tenants file
    updated_at: float | None = None


@dataclass(frozen=True)
class Budget:
    """Spend against a budget; `limit` None: unlimited."""

    spent: int
    limit: int | None

    @property
    def fraction(self) -> float | None:
        """Spent / limit (above 1 once overspent, as an in-flight request may); a budget of 0 is all
        spent (1.0); None: unlimited."""
        if self.limit is None:
            return None
        if self.limit == 0:
            return 1.0
        return self.spent / self.limit


@dataclass(frozen=True)
class TenantSpend:
    """A tenant's tokens today and this month (UTC, from the ledger) against its budgets: the one
    figure the console's bars, the admin API and the budget gauge (telemetry/budget.py) show."""

    tenant: TenantView
    today: Budget
    month: Budget


@dataclass(frozen=True)
class DeletedTenant:
    name: str
    revoked_keys: tuple[str, ...]  # ids of the keys the deletion revoked


KeyState = Literal["active", "expired", "revoked"]


@dataclass(frozen=True)
class KeyView:
    """A key's public view: never its secret or its hash."""

    key_id: str
    tenant: str
    name: str
    limits: Limits | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    state: KeyState


@dataclass(frozen=True)
class KeyRequest:
    """A new key. `expires_at`: unix seconds or text `parse_instant` reads; or `expires_in_days`."""

    tenant: str
    name: str = ""
    expires_at: str | float | None = None
    expires_in_days: float | None = None
    limits: Limits | None = None  # narrows the tenant's


@dataclass(frozen=True)
class CreatedKey:
    view: KeyView
    key: str  # the whole key, to show once: it is stored only as a hash


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


@dataclass(frozen=True)
class LimitsPatch:
    """Limits to change: a field left UNSET keeps its value; None makes it unlimited."""

    requests_per_minute: int | _Unset | None = UNSET
    tokens_per_minute: int | _Unset | None = UNSET
    tokens_per_day: int | _Unset | None = UNSET
    tokens_per_month: int | _Unset | None = UNSET
    max_concurrent: int | _Unset | None = UNSET
    allowed_models: tuple[str, ...] | _Unset = UNSET
    default_max_tokens: int | _Unset | None = UNSET

    def is_empty(self) -> bool:
        return all(isinstance(getattr(self, f.name), _Unset) for f in dataclasses.fields(self))

    def apply(self, base: Limits) -> Limits:
        changes = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not isinstance(getattr(self, f.name), _Unset)
        }
        return dataclasses.replace(base, **changes)


# -- audit payloads: camelCase, built only from these models ------------------------------------
class _Audit(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    def payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class TenantLimitsAudit(_Audit):
    """tenant.create, tenant.set_limits: the tenant's limits after the change."""

    limits: LimitsModel


class TenantDeletedAudit(_Audit):
    revoked_keys: list[str]


class KeyCreatedAudit(_Audit):
    tenant: str
    name: str
    expires_at: str | None
    limits: LimitsModel | None


class KeyRevokedAudit(_Audit):
    tenant: str


# -- validation: pure -------------------------------------------------------------------------
def check_tenant_name(name: str) -> str:
    if not is_tenant_name(name):
        raise InvalidInput(f"invalid tenant name {name!r}: {TENANT_NAME_HELP}", "name")
    return name


def check_limits(limits: Limits, param: str = "limits") -> Limits:
    """Limits within the one schema (`LimitsModel`): whole numbers from 0 to LIMIT_MAX, models."""
    data = {to_camel(f.name): getattr(limits, f.name) for f in dataclasses.fields(limits)}
    try:
        return LimitsModel.model_validate(data).to_limits()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join([param, *(str(p) for p in first["loc"][:1])])
        reason = describe(exc, LimitsModel)[0].partition(": ")[2]
        raise InvalidInput(f"{where}: {reason}", where) from None


def check_key_name(name: str) -> str:
    if len(name) > KEY_NAME_MAX:
        raise InvalidInput(f"a key's name has at most {KEY_NAME_MAX} characters", "name")
    if any(not c.isprintable() for c in name):
        raise InvalidInput("a key's name can not hold control characters", "name")
    return name


def check_key_id(key_id: str) -> str:
    if parse_key(key_id) is not None:
        raise InvalidInput("that is a whole key: pass only its id (the 16 characters after 'rp_')", "key_id")
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidInput(f"'{key_id[:40]}' is not a key id: 16 lowercase hex characters", "key_id")
    return key_id


def instant(value: str | float, param: str) -> float:
    """Unix seconds from text or a number: finite, not before 1970, not after year 9999."""
    if isinstance(value, str):
        try:
            value = parse_instant(value)
        except ValueError as exc:
            raise InvalidInput(str(exc), param) from None
    # bool is an int: `true` is no instant.
    if isinstance(value, bool) or not math.isfinite(value) or not 0 <= value <= INSTANT_MAX:
        hint = (
            " (unix milliseconds given for seconds?)" if math.isfinite(value) and value > INSTANT_MAX else ""
        )
        raise InvalidInput(
            f"{value!r} is not an instant between 1970 and 9999{hint}: give a date (2026-11-01), "
            "an ISO datetime or unix seconds",
            param,
        )
    return float(value)


def key_expiry(expires_at: str | float | None, expires_in_days: float | None, now: float) -> float | None:
    """When a new key stops working: after now, at most KEY_LIFETIME_MAX_S ahead; None: never."""
    if expires_at is not None and expires_in_days is not None:
        raise InvalidInput("give expires_at or expires_in_days, not both", "expires_at")
    if expires_in_days is not None:
        days = expires_in_days
        if isinstance(days, bool) or not math.isfinite(days) or not 0 < days * 86400 <= KEY_LIFETIME_MAX_S:
            raise InvalidInput(
                f"expires_in_days must be more than 0 and at most {KEY_LIFETIME_MAX_S / 86400:.0f} "
                f"(got {days!r})",
                "expires_in_days",
            )
        return now + days * 86400
    if expires_at is None:
        return None
    expires = instant(expires_at, "expires_at")
    if expires <= now:
        raise InvalidInput(f"the expiry {format_instant(expires)} is in the past", "expires_at")
    if expires - now > KEY_LIFETIME_MAX_S:
        raise InvalidInput(
            f"the expiry {format_instant(expires)} is more than 100 years ahead (unix milliseconds "
            "given for seconds?); leave it out for a key that does not expire",
            "expires_at",
        )
    return expires


def key_state(row: KeyRow, now: float) -> KeyState:
    if row.revoked_at is not None:
        return "revoked"
    return "expired" if row.expires_at is not None and row.expires_at <= now else "active"


def _nothing(_: str) -> None:
    pass


# -- the use cases ------------------------------------------------------------------------------
class AdminService:
    """The admin use cases on one database.

    `declared`: the tenants file's tenants (read-only here: the file is their source of truth).
    `forget_tenant` / `forget_key`: called after a change, so this process's caches see it at once.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        declared: Mapping[str, Limits] | None = None,
        forget_tenant: Callable[[str], None] = _nothing,
        forget_key: Callable[[str], None] = _nothing,
        clock: Callable[[], float] = time.time,
        new_key: Callable[[], NewKey] = generate_key,
    ) -> None:
        self.repo = repo
        self.declared: Mapping[str, Limits] = declared if declared is not None else {}
        self._forget_tenant, self._forget_key = forget_tenant, forget_key
        self._clock, self._new_key = clock, new_key

    # -- tenants --------------------------------------------------------------------------------
    async def list_tenants(self) -> list[TenantView]:
        """The file's tenants and the database's, by name; a name in both is the file's."""
        rows = {t.name: t for t in await self.repo.list_tenants()}
        views = []
        for name in sorted(set(self.declared) | set(rows)):
            if name in self.declared:
                views.append(TenantView(name, "file", self.declared[name]))
            else:
                row = rows[name]
                views.append(TenantView(name, "database", row.limits, row.created_at, row.updated_at))
        return views

    async def get_tenant(self, name: str) -> TenantView:
        if name in self.declared:
            return TenantView(name, "file", self.declared[name])
        row = await self.repo.get_tenant(name)
        if row is None:
            raise NotFound("tenant_not_found", f"tenant '{name}' does not exist")
        return TenantView(name, "database", row.limits, row.created_at, row.updated_at)

    async def create_tenant(self, actor: str, name: str, limits: Limits | None = None) -> TenantView:
        """A database tenant; limits not given are unlimited."""
        check_tenant_name(name)
        limits = check_limits(limits or Limits())
        self._not_in_file(name, "change")
        if not await self.repo.create_tenant(name, limits):
            raise Conflict("tenant_exists", f"tenant '{name}' exists already", "name")
        await self.repo.audit(actor, TENANT_CREATE, name, _limits_audit(limits))
        self._forget_tenant(name)
        return await self.get_tenant(name)

    async def set_limits(self, actor: str, name: str, limits: Limits | LimitsPatch) -> TenantView:
        """Replace the limits (a `Limits`) or change some of them (a `LimitsPatch`)."""
        self._not_in_file(name, "change its limits")
        if isinstance(limits, LimitsPatch):
            row = await self.repo.get_tenant(name)
            if row is None:
                raise NotFound("tenant_not_found", f"tenant '{name}' does not exist")
            limits = limits.apply(row.limits)
        limits = check_limits(limits)
        if not await self.repo.set_tenant_limits(name, limits):
            raise NotFound("tenant_not_found", f"tenant '{name}' does not exist")
        await self.repo.audit(actor, TENANT_SET_LIMITS, name, _limits_audit(limits))
        self._forget_tenant(name)
        return await self.get_tenant(name)

    async def delete_tenant(self, actor: str, name: str) -> DeletedTenant:
        """Delete a tenant and revoke its keys (kept, revoked, for the audit trail)."""
        self._not_in_file(name, "remove")
        owned = [k.key_id for k in await self.repo.list_keys(name) if k.revoked_at is None]
        if not await self.repo.delete_tenant(name):
            raise NotFound("tenant_not_found", f"tenant '{name}' does not exist")
        await self.repo.audit(actor, TENANT_DELETE, name, TenantDeletedAudit(revoked_keys=owned).payload())
        self._forget_tenant(name)
        for key_id in owned:
            self._forget_key(key_id)
        return DeletedTenant(name, tuple(owned))

    def _not_in_file(self, name: str, what: str) -> None:
        if name in self.declared:
            raise Conflict(
                "tenant_declared_in_file",
                f"tenant '{name}' is declared in the tenants file: {what} it there",
                "name",
            )

    # -- keys -----------------------------------------------------------------------------------
    async def create_key(self, actor: str, request: KeyRequest) -> CreatedKey:
        """A new key for a tenant of the file or the database; returns the key, shown once."""
        now = self._clock()
        name = check_key_name(request.name)
        limits = check_limits(request.limits) if request.limits is not None else None
        expires = key_expiry(request.expires_at, request.expires_in_days, now)
        tenant = request.tenant
        if tenant not in self.declared and await self.repo.get_tenant(tenant) is None:
            raise NotFound("tenant_not_found", f"tenant '{tenant}' does not exist")
        new = self._new_key()
        row = await self.repo.create_key(
            new.key_id, tenant, new.secret_hash, name=name, limits=limits, expires_at=expires, now=now
        )
        detail = KeyCreatedAudit(
            tenant=tenant,
            name=name,
            expires_at=format_instant(expires),
            limits=LimitsModel.of(limits) if limits is not None else None,
        )
        await self.repo.audit(actor, KEY_CREATE, new.key_id, detail.payload())
        return CreatedKey(self._view(row, now), new.key)

    async def list_keys(self, tenant: str | None = None) -> list[KeyView]:
        now = self._clock()
        return [self._view(row, now) for row in await self.repo.list_keys(tenant)]

    async def revoke_key(self, actor: str, key_id: str) -> KeyView:
        check_key_id(key_id)
        row = await self.repo.get_key(key_id)
        if row is None:
            raise NotFound("key_not_found", f"API key '{key_id}' does not exist")
        if not await self.repo.revoke_key(key_id):
            raise Conflict("key_revoked", f"API key '{key_id}' was revoked already")
        await self.repo.audit(actor, KEY_REVOKE, key_id, KeyRevokedAudit(tenant=row.tenant).payload())
        self._forget_key(key_id)
        revoked = await self.repo.get_key(key_id)
        return self._view(revoked or row, self._clock())

    @staticmethod
    def _view(row: KeyRow, now: float) -> KeyView:
        return KeyView(
            key_id=row.key_id,
            tenant=row.tenant,
            name=row.name,
            limits=row.limits,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            state=key_state(row, now),
        )

    # -- reports --------------------------------------------------------------------------------
    async def usage(
        self,
        since: str | float | None = None,
        *,
        until: str | float | None = None,
        tenant: str | None = None,
    ) -> list[UsageTotal]:
        """Ledger totals by UTC day, tenant and model in [since, until); since: default this month."""
        start = month_start(self._clock()) if since is None else instant(since, "since")
        end = None if until is None else instant(until, "until")
        if end is not None and end <= start:
            raise InvalidInput("until must come after since", "until")
        return await self.repo.usage_totals(start, tenant=tenant, until=end)

    async def audit_log(self, since: str | float = 0.0) -> list[AuditEntry]:
        return await self.repo.audit_log(instant(since, "since"))

    async def spend(self) -> list[TenantSpend]:
        """Every tenant's spend today and this month against its daily and monthly token budgets.

        The ledger holds a request once it ended (and the ledger writer caught up): a request
        still running counts once it is written."""
        now = self._clock()
        tenants = await self.list_tenants()
        today = _tokens_by_tenant(await self.repo.spend_since(day_start(now)))
        month = _tokens_by_tenant(await self.repo.spend_since(month_start(now)))
        return [
            TenantSpend(
                t,
                Budget(today.get(t.name, 0), t.limits.tokens_per_day),
                Budget(month.get(t.name, 0), t.limits.tokens_per_month),
            )
            for t in tenants
        ]


def _tokens_by_tenant(spend: list[SpendTotal]) -> dict[str, int]:
    """The ledger's rows are per tenant and subject (key or OIDC user): summed per tenant."""
    out: dict[str, int] = {}
    for row in spend:
        out[row.tenant] = out.get(row.tenant, 0) + row.tokens
    return out


def _limits_audit(limits: Limits) -> dict[str, Any]:
    return TenantLimitsAudit(limits=LimitsModel.of(limits)).payload()
