"""The in-process quota store: one process only (the HTTP side refuses several workers with it)."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from respublica.serving.gateway.contracts import Admission, Principal, Rejection, Reservation
from respublica.serving.gateway.db.repo import SpendTotal
from respublica.serving.gateway.quota.arithmetic import (
    MAX_RESERVATION,
    PERIOD_GRACE_S,
    Check,
    SettleKeys,
    next_month,
    plan_admission,
)
from respublica.serving.gateway.quota.base import (
    LATE_SETTLE_S,
    QuotaReservation,
    answer,
    new_reservation_id,
    seed_values,
)

_SWEEP_EVERY_S = 60.0
_UNREAD = (0, 0)


@dataclass
class _Lease:
    tokens: int
    keys: SettleKeys
    expires_at: float


class MemoryQuotaStore:
    """Counters in a dict. Every operation runs to its end without an await inside, so on the one
    event loop that uses the store it is atomic as it stands: no lock is taken (acquiring one was
    an await per admission and per settlement that guarded nothing)."""

    shared = False

    def __init__(self, *, lease_s: float = 900.0, clock: Callable[[], float] = time.time) -> None:
        self.lease_s = lease_s
        self._clock = clock
        self._counters: dict[tuple[str, str], tuple[int, float]] = {}  # (tenant, key) -> (value, expiry)
        # (tenant, `<scope>:cc`) -> live leases holding a slot. No expiry: a lease frees its slot
        # when it settles or is reclaimed, however long renewals kept it alive.
        self._slots: dict[tuple[str, str], int] = {}
        self._leases: dict[str, dict[str, _Lease]] = {}
        self._heaps: dict[str, list[tuple[float, str]]] = {}
        self._expired: dict[str, dict[str, tuple[float, _Lease]]] = {}  # reclaimed id -> (when, lease)
        self._last_sweep = 0.0

    # -- counters -------------------------------------------------------------------------------
    def _get(self, tenant: str, key: str, now: float) -> int | None:
        entry = self._counters.get((tenant, key))
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def _adjust(self, tenant: str, key: str, amount: int, now: float) -> None:
        """Add to a live counter, never below zero; a counter gone with its period stays gone."""
        entry = self._counters.get((tenant, key))
        if entry is not None and entry[1] > now:
            self._counters[(tenant, key)] = (max(0, entry[0] + amount), entry[1])

    def _take_slots(self, tenant: str, keys: Sequence[str]) -> None:
        for key in keys:
            self._slots[(tenant, key)] = self._slots.get((tenant, key), 0) + 1

    def _free_slots(self, tenant: str, keys: Sequence[str]) -> None:
        for key in keys:
            left = self._slots.get((tenant, key), 0) - 1
            if left > 0:
                self._slots[(tenant, key)] = left
            else:
                self._slots.pop((tenant, key), None)

    def _value(self, tenant: str, check: Check, now: float) -> tuple[int, int]:
        if check.reason == "concurrency":
            return self._slots.get((tenant, check.key), 0), 0
        previous = (self._get(tenant, check.prev_key, now) or 0) if check.prev_key else 0
        return self._get(tenant, check.key, now) or 0, previous

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < _SWEEP_EVERY_S:
            return
        self._last_sweep = now
        self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
        for tenant in [t for t, leases in self._leases.items() if not leases]:
            del self._leases[tenant]
            self._heaps.pop(tenant, None)

    # -- leases ---------------------------------------------------------------------------------
    def _reclaim(self, tenant: str, now: float) -> None:
        """Expired leases free their concurrency slot; their token hold stays charged (nobody said
        what they used, and no budget may be overshot) until a late settlement does."""
        heap = self._heaps.get(tenant)
        leases = self._leases.get(tenant, {})
        expired = self._expired.setdefault(tenant, {})
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            lease = leases.get(rid)
            if lease is None or lease.expires_at > now:
                continue  # settled in time, or renewed (its newer heap entry stands)
            del leases[rid]
            self._free_slots(tenant, lease.keys.slots)
            expired[rid] = (now, lease)
        for rid in [r for r, (at, _) in expired.items() if at <= now - LATE_SETTLE_S]:
            del expired[rid]

    # -- QuotaStore -----------------------------------------------------------------------------
    async def admit(self, principal: Principal, tokens: int) -> Admission | Rejection:
        now = self._clock()
        self._sweep(now)
        tenant = principal.tenant
        self._reclaim(tenant, now)
        plan = plan_admission(principal, tokens, now)
        # A check without a limit only counts: its value decides nothing and is not read.
        values = [_UNREAD if c.limit is None else self._value(tenant, c, now) for c in plan.checks]
        rid = new_reservation_id()
        result = answer(principal, plan, values, rid, self.lease_s)
        if isinstance(result, Admission):
            counters = self._counters
            for c in plan.checks:
                if c.reason != "concurrency":  # inlined: up to eight adds per admission
                    entry = counters.get((tenant, c.key))
                    held = entry[0] if entry is not None and entry[1] > now else 0
                    counters[(tenant, c.key)] = (held + c.cost, now + c.ttl_s)
            self._take_slots(tenant, plan.keys.slots)
            expires = now + self.lease_s
            self._leases.setdefault(tenant, {})[rid] = _Lease(tokens, plan.keys, expires)
            heapq.heappush(self._heaps.setdefault(tenant, []), (expires, rid))
        return result

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Runs to its end without an await, so a cancel of its caller can not land inside it (the
        `QuotaStore` contract) and no task is needed to shield it."""
        if isinstance(reservation, QuotaReservation) and reservation.unaccounted:
            return
        used = min(max(0, used_tokens), MAX_RESERVATION)  # never past what a counter can hold
        now = self._clock()
        tenant = reservation.tenant
        lease = self._leases.get(tenant, {}).pop(reservation.id, None)
        if lease is not None:
            self._free_slots(tenant, lease.keys.slots)
        else:
            # Reclaimed before it settled: the slot is free already, the hold still charged.
            late = self._expired.get(tenant, {}).pop(reservation.id, None)
            if late is None:
                return  # settled before
            lease = late[1]
        for key in lease.keys.tokens:
            self._adjust(tenant, key, used - lease.tokens, now)

    async def extend(self, reservations: Sequence[Reservation]) -> None:
        """Renew the leases of requests still in flight, so a long one is never reclaimed."""
        now = self._clock()
        for reservation in reservations:
            lease = self._leases.get(reservation.tenant, {}).get(reservation.id)
            if lease is None or lease.expires_at <= now:
                continue
            lease.expires_at = now + self.lease_s
            heapq.heappush(self._heaps.setdefault(reservation.tenant, []), (lease.expires_at, reservation.id))

    async def seed(self, day: Sequence[SpendTotal], month: Sequence[SpendTotal]) -> None:
        """Rebuild this day's and month's spend from the ledger; counters that exist are kept."""
        now = self._clock()
        ttl = next_month(now) - now + PERIOD_GRACE_S
        for (tenant, key), tokens in seed_values(day, month, now).items():
            if self._get(tenant, key, now) is None:
                self._counters[(tenant, key)] = (tokens, now + ttl)

    async def spent(self, tenant: str, key: str) -> int:
        """A counter's value (tests and diagnostics): e.g. `t:d:20261125`, `s:<subject>:cc`."""
        now = self._clock()
        if key.endswith(":cc"):
            self._reclaim(tenant, now)
            return self._slots.get((tenant, key), 0)
        return self._get(tenant, key, now) or 0

    async def close(self) -> None:
        return None
