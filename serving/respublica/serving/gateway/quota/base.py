"""What both quota stores share: the reservation they hand out and how a plan becomes an answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from respublica.serving.gateway.contracts import Admission, Principal, Rejection, Reservation
from respublica.serving.gateway.db.repo import SpendTotal
from respublica.serving.gateway.ids import new_id
from respublica.serving.gateway.quota.arithmetic import (
    Plan,
    day_name,
    first_failure,
    headers_for,
    month_name,
    rejection,
    scope_prefix,
)

FailPolicy = Literal["closed", "open"]
# How long a reclaimed (expired) reservation is remembered, so that its late settlement still
# charges what it used.
LATE_SETTLE_S = 3600.0
STORE_RETRY_S = 1.0


@dataclass(frozen=True)
class QuotaReservation(Reservation):
    """A reservation with what the store needs to settle it."""

    started_at: float = 0.0
    unaccounted: bool = False  # admitted by the fail-open policy while the store was unreachable
    # The store's state generation it was admitted in (Redis: the tenant's epoch key). A settlement
    # that finds the store's state lost since (another epoch) charges what was used in full.
    epoch: str = ""
    # The token counters its admission charged (`Plan.keys.tokens`), settled on those only; empty:
    # not known, the day's and month's (`settle_keys`), which every admission charges.
    token_keys: tuple[str, ...] = ()


def new_reservation_id() -> str:
    return new_id()


def started_at(reservation: Reservation, lease_s: float) -> float:
    if isinstance(reservation, QuotaReservation):
        return reservation.started_at
    return reservation.expires_at - lease_s


def answer(
    principal: Principal,
    plan: Plan,
    values: list[tuple[int, int]],
    reservation_id: str,
    lease_s: float,
    epoch: str = "",
) -> Admission | Rejection:
    failed = first_failure(plan, values)
    if failed is not None:
        return rejection(principal, plan, failed, values)
    reservation = QuotaReservation(
        id=reservation_id,
        tenant=principal.tenant,
        subject=principal.subject,
        tokens=plan.tokens,
        expires_at=plan.now + lease_s,
        started_at=plan.now,
        epoch=epoch,
        token_keys=plan.keys.tokens,
    )
    return Admission(reservation, headers_for(plan, values, admitted=True))


def unavailable(
    principal: Principal, tokens: int, now: float, lease_s: float, policy: FailPolicy
) -> Admission | Rejection:
    if policy == "open":
        return Admission(
            QuotaReservation(
                id=f"unaccounted-{new_reservation_id()}",
                tenant=principal.tenant,
                subject=principal.subject,
                tokens=tokens,
                expires_at=now + lease_s,
                started_at=now,
                unaccounted=True,
            )
        )
    return Rejection(
        "store_unavailable",
        "the quota store is unreachable, so no request can be admitted; retry shortly",
        STORE_RETRY_S,
    )


def seed_values(
    day: Sequence[SpendTotal], month: Sequence[SpendTotal], now: float
) -> dict[tuple[str, str], int]:
    """(tenant, counter) -> tokens: the day and month counters a restart rebuilds from the ledger."""
    out: dict[tuple[str, str], int] = {}
    for rows, period in ((day, f"d:{day_name(now)}"), (month, f"m:{month_name(now)}")):
        for row in rows:
            for scope in (scope_prefix("tenant", row.subject), scope_prefix("key", row.subject)):
                key = (row.tenant, f"{scope}:{period}")
                out[key] = out.get(key, 0) + row.tokens
    return out
