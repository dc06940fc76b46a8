"""Quota decisions as pure arithmetic: which counters a request touches, whether it fits, when to retry.

Every store runs the same plan: read each check's counters, reject on the first check that does
not fit, otherwise add every check's cost. Only the reading and writing differ (a dict, or one
Redis Lua script), so both stores decide identically. A plan checks the day and month budgets
always, a minute window or concurrency only where a limit is set (`_scope_checks`).

Windows and periods:
- Requests and tokens per minute use a *sliding window counter*: two fixed one-minute buckets,
  the previous one weighted by the part of it still inside the last 60 s. It is smooth at minute
  boundaries (a fixed window lets a burst of twice the limit through across a boundary) and
  needs two counters, not a log of every request.
- Token budgets per day and per month are plain counters over UTC calendar periods (a request
  counts in the period it started in); they are exact, never approximated.
- Concurrency is the number of live leases: reservations neither settled nor run out. Both stores
  count the leases themselves (a renewed lease counts for as long as it is renewed), so it has no
  counter and no expiry of its own.

Every counter exists for the tenant and for the caller (key id or OIDC subject); the tenant's
limits apply to the first, `Principal.key_limits` to the second.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NamedTuple

from respublica.serving.gateway.contracts import Limits, Principal, RateHeaders, Rejection, RejectReason

WINDOW_S = 60
DAY_S = 86_400  # a UTC day in POSIX time (no leap seconds), so day numbers are ts // DAY_S
WINDOW_TTL_S = 3 * WINDOW_S
# Period counters outlive their period so a late settlement still finds them.
PERIOD_GRACE_S = 2 * 86400
CONCURRENCY_RETRY_S = 1.0
# The most tokens one request may reserve (the HTTP side answers 400 above it). Far above any real
# request (a million-token context times 128 sequences is 1.3e8) and far below where the stores'
# counters lose precision (Lua numbers are doubles: exact to 2^53, about 9e15) or overflow (Redis
# INCRBY at 2^63). Limits stop at 1e15 (`db.codec.LIMIT_MAX`), so a counter, a limit and one
# reservation always sum below 2^53.
MAX_RESERVATION = 10**12
# Usage a model reports is believed up to this (per request); above it, or negative, the report is
# nonsense and the reservation is charged instead.
MAX_REPORTED_TOKENS = MAX_RESERVATION

Scope = Literal["tenant", "key"]


class Check(NamedTuple):
    """One counter a request is charged to; `limit` None counts without limiting.

    A named tuple, not a frozen dataclass: up to ten are made per admission, and a frozen dataclass's
    `__init__` (one `object.__setattr__` per field) cost several times as much."""

    key: str  # relative to the tenant; the store adds its prefix and the tenant's hash tag
    prev_key: str | None  # the previous bucket of a sliding window
    prev_weight: float
    cost: int
    limit: int | None
    reason: RejectReason
    scope: Scope
    ttl_s: int  # the counter's lifetime; 0 for concurrency, which the stores count from live leases


@dataclass(frozen=True)
class SettleKeys:
    """The counters a reservation holds: those its admission charged (`plan_admission`)."""

    tokens: tuple[str, ...]  # adjusted by (used - reserved) at settlement
    slots: tuple[str, ...]  # concurrency: released at settlement or expiry


@dataclass(frozen=True)
class Plan:
    now: float
    tokens: int
    checks: tuple[Check, ...]
    keys: SettleKeys


def scope_prefix(scope: Scope, subject: str) -> str:
    return "t" if scope == "tenant" else f"s:{subject}"


def minute_index(ts: float) -> int:
    return int(ts // WINDOW_S)


def day_name(ts: float) -> str:
    return _day_name(int(ts // DAY_S))


def month_name(ts: float) -> str:
    return _day_name(int(ts // DAY_S))[:6]


# Every admission names its day and month buckets; the name changes once a UTC day, so it is
# formatted once per day number rather than per request (strftime was ~5 % of a request's CPU).
@functools.lru_cache(maxsize=64)
def _day_name(day_number: int) -> str:
    return datetime.fromtimestamp(day_number * DAY_S, UTC).strftime("%Y%m%d")


def day_start(ts: float) -> float:
    d = datetime.fromtimestamp(ts, UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def month_start(ts: float) -> float:
    d = datetime.fromtimestamp(ts, UTC)
    return datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()


def next_day(ts: float) -> float:
    # POSIX time has no leap seconds: a UTC day starts at a multiple of DAY_S.
    return float((int(ts // DAY_S) + 1) * DAY_S)


def next_month(ts: float) -> float:
    return _next_month(int(ts // DAY_S))


@functools.lru_cache(maxsize=64)
def _next_month(day_number: int) -> float:
    d = datetime.fromtimestamp(day_number * DAY_S, UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


# The counter names of one caller in one minute, formatted once per minute rather than on every
# admission and settlement (the f-strings and date names were most of an admission's cost).
@functools.lru_cache(maxsize=4096)
def _names(scope: Scope, subject: str, idx: int, day_number: int) -> tuple[str, str, str, str, str, str, str]:
    s = scope_prefix(scope, subject)
    day = _day_name(day_number)
    return (
        f"{s}:rq:{idx}",
        f"{s}:rq:{idx - 1}",
        f"{s}:tk:{idx}",
        f"{s}:tk:{idx - 1}",
        f"{s}:d:{day}",
        f"{s}:m:{day[:6]}",
        f"{s}:cc",
    )


@functools.lru_cache(maxsize=4096)
def _settle_keys(subject: str, idx: int, day_number: int) -> SettleKeys:
    """The counters every admission charges: the day's and the month's spend of both scopes, and
    both concurrency slots. A minute window is charged only where limited (`_scope_checks`), so
    which ones a reservation holds is in its plan (`Plan.keys`), not derivable from its caller."""
    t = _names("tenant", subject, idx, day_number)
    k = _names("key", subject, idx, day_number)
    return SettleKeys(tokens=(t[4], t[5], k[4], k[5]), slots=(t[6], k[6]))


def settle_keys(subject: str, started_at: float) -> SettleKeys:
    """`_settle_keys` at a reservation's start: the counters any admission of `subject` then
    charged (what a reservation that does not name its own is settled on)."""
    return _settle_keys(subject, minute_index(started_at), int(started_at // DAY_S))


# The checks whose counters hold a reservation's tokens, adjusted to its usage when it settles.
_TOKEN_REASONS = frozenset({"tokens_per_minute", "tokens_per_day", "tokens_per_month"})


_NO_LIMITS = Limits()


class _When(NamedTuple):
    """What the checks of one admission take from its time, worked out once for both scopes."""

    idx: int  # the minute
    day_number: int
    weight: float  # of the previous minute's bucket
    day_ttl: int
    month_ttl: int


def _when(now: float) -> _When:
    idx = minute_index(now)
    day_number = int(now // DAY_S)
    return _When(
        idx,
        day_number,
        1.0 - (now - idx * WINDOW_S) / WINDOW_S,
        int(next_day(now) - now) + PERIOD_GRACE_S,
        int(_next_month(day_number) - now) + PERIOD_GRACE_S,
    )


def _scope_checks(scope: Scope, subject: str, limits: Limits | None, tokens: int, when: _When) -> list[Check]:
    """One scope's checks, in the order a refusal is reported: requests and tokens per minute, the
    day's and the month's budget, concurrency.

    The day and month counters are kept whether limited or not: they are the spend a budget set
    later starts from (and what the ledger rebuilds after a loss). A minute window or the
    concurrency count without a limit is left out: nothing reads it (a per-minute limit set later
    starts counting then, within the minute), and every check is two counters and five arguments
    in the Redis store's admission script (the live leases that concurrency counts are kept
    either way)."""
    lim = limits or _NO_LIMITS
    rq, rq_prev, tk, tk_prev, day, month, cc = _names(scope, subject, when.idx, when.day_number)
    w, ttl = when.weight, WINDOW_TTL_S
    checks: list[Check] = []
    if lim.requests_per_minute is not None:
        checks.append(Check(rq, rq_prev, w, 1, lim.requests_per_minute, "requests_per_minute", scope, ttl))
    if lim.tokens_per_minute is not None:
        checks.append(Check(tk, tk_prev, w, tokens, lim.tokens_per_minute, "tokens_per_minute", scope, ttl))
    checks.append(Check(day, None, 0.0, tokens, lim.tokens_per_day, "tokens_per_day", scope, when.day_ttl))
    checks.append(
        Check(month, None, 0.0, tokens, lim.tokens_per_month, "tokens_per_month", scope, when.month_ttl)
    )
    if lim.max_concurrent is not None:
        checks.append(Check(cc, None, 0.0, 1, lim.max_concurrent, "concurrency", scope, 0))
    return checks


def plan_admission(principal: Principal, tokens: int, now: float) -> Plan:
    if not 0 <= tokens <= MAX_RESERVATION:
        raise ValueError(f"a reservation must be between 0 and {MAX_RESERVATION} tokens")
    when = _when(now)
    checks = _scope_checks("tenant", principal.subject, principal.tenant_limits, tokens, when)
    checks += _scope_checks("key", principal.subject, principal.key_limits, tokens, when)
    # Settled on exactly the token counters this admission charges: a minute window it left out
    # (no limit when it was admitted) must not be adjusted by its usage later, or a limit set
    # meanwhile would be given back a hold it never had.
    slots = _settle_keys(principal.subject, when.idx, when.day_number).slots
    keys = SettleKeys(tokens=tuple(c.key for c in checks if c.reason in _TOKEN_REASONS), slots=slots)
    return Plan(now, tokens, tuple(checks), keys)


def estimate(check: Check, current: int, previous: int) -> float:
    """The sliding-window estimate (or the plain counter) before this request. Lua mirrors it."""
    return current + previous * check.prev_weight


def first_failure(plan: Plan, values: list[tuple[int, int]]) -> int | None:
    """Index of the first check that does not fit, given (current, previous) per check."""
    for i, (check, (cur, prev)) in enumerate(zip(plan.checks, values, strict=True)):
        if check.limit is not None and estimate(check, cur, prev) + check.cost > check.limit:
            return i
    return None


# -- when to come back -----------------------------------------------------------------------------
def window_retry_after(
    previous: float, current: float, elapsed: float, cost: int, limit: int
) -> float | None:
    """Seconds until a sliding window admits `cost` more, assuming no other traffic; None: never.

    Within the current minute the estimate is `previous * (1 - t/W) + current`; from the next
    minute on, `current` becomes the decaying previous bucket.
    """
    w = float(WINDOW_S)
    if cost > limit:
        return None
    if current + cost <= limit:
        if previous <= 0:
            return 0.0
        t = w * (1.0 - (limit - current - cost) / previous)
        return max(0.0, t - elapsed)
    t_next = 0.0 if current <= 0 else w * (1.0 - (limit - cost) / current)
    return (w - elapsed) + max(0.0, t_next)


def window_reset(previous: float, current: float, elapsed: float) -> float:
    """Seconds until the window is back to its full limit (both buckets decayed)."""
    if current > 0:
        return 2 * WINDOW_S - elapsed
    if previous > 0:
        return WINDOW_S - elapsed
    return 0.0


def _who(check: Check, principal: Principal) -> str:
    if check.scope == "tenant":
        return f"tenant '{principal.tenant}'"
    return f"key '{principal.subject}'" if principal.via == "key" else f"caller '{principal.subject}'"


def _elapsed(now: float) -> float:
    return now - minute_index(now) * WINDOW_S


def rejection(principal: Principal, plan: Plan, index: int, values: list[tuple[int, int]]) -> Rejection:
    check = plan.checks[index]
    cur, prev = values[index]
    limit = check.limit if check.limit is not None else 0
    est = estimate(check, cur, prev)
    who = _who(check, principal)
    now = plan.now
    headers = headers_for(plan, values, admitted=False)
    never = check.cost > limit
    ask = f"this request may use up to {check.cost} tokens (prompt bound + max tokens x n)"
    if check.reason in ("requests_per_minute", "tokens_per_minute"):
        retry = window_retry_after(prev, cur, _elapsed(now), check.cost, limit)
        unit = "requests" if check.reason == "requests_per_minute" else "tokens"
        if retry is None:
            msg = (
                f"{who} is not allowed any requests"
                if check.reason == "requests_per_minute"
                else f"{ask}, more than the {limit} tokens per minute {who} may use: lower max_tokens"
            )
            return Rejection(check.reason, msg, float(WINDOW_S), headers)
        msg = f"{who} has reached its limit of {limit} {unit} per minute; retry after {math.ceil(retry)}s"
        return Rejection(check.reason, msg, retry, headers)
    if check.reason in ("tokens_per_day", "tokens_per_month"):
        period = "daily" if check.reason == "tokens_per_day" else "monthly"
        reset = next_day(now) if check.reason == "tokens_per_day" else next_month(now)
        left = max(0, int(limit - est))
        if never:
            msg = f"{ask}, more than the {period} budget of {limit} tokens of {who}: lower max_tokens"
        else:
            msg = (
                f"{who} has {left} tokens left of its {period} budget of {limit}, and {ask}; "
                f"the budget renews at {datetime.fromtimestamp(reset, UTC):%Y-%m-%d %H:%M} UTC"
            )
        return Rejection(check.reason, msg, max(0.0, reset - now), headers)
    msg = f"{who} already has {int(est)} requests in flight, its limit is {limit}; retry shortly"
    return Rejection("concurrency", msg, CONCURRENCY_RETRY_S, headers)


def headers_for(plan: Plan, values: list[tuple[int, int]], *, admitted: bool) -> RateHeaders:
    """OpenAI's per-minute headers from the tightest of the tenant's and the key's windows."""
    elapsed = _elapsed(plan.now)
    # (limit, remaining, reset) of the tightest requests and tokens window, found in one pass;
    # of two windows as tight, the first (the tenant's) is reported.
    rq: tuple[int, int, float] | None = None
    tk: tuple[int, int, float] | None = None
    for check, (cur, prev) in zip(plan.checks, values, strict=True):
        if check.limit is None:
            continue
        if check.reason == "requests_per_minute":
            requests = True
        elif check.reason == "tokens_per_minute":
            requests = False
        else:
            continue
        best = rq if requests else tk
        cost = check.cost if admitted else 0
        remaining = max(0, math.floor(check.limit - (estimate(check, cur, prev) + cost)))
        if best is None or remaining < best[1]:
            best = (check.limit, remaining, window_reset(prev, cur + cost, elapsed))
            if requests:
                rq = best
            else:
                tk = best
    return RateHeaders(
        limit_requests=rq[0] if rq else None,
        remaining_requests=rq[1] if rq else None,
        reset_requests_s=rq[2] if rq else None,
        limit_tokens=tk[0] if tk else None,
        remaining_tokens=tk[1] if tk else None,
        reset_tokens_s=tk[2] if tk else None,
    )
