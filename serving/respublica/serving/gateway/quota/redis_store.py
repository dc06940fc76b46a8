"""The Redis quota store: several gateway processes or replicas share one set of counters.

Each admission and each settlement is one Lua script, so it is atomic. Every key of a tenant
carries the tenant as a hash tag (`rp:{tenant}:...`), so one tenant's keys live in one Redis
Cluster slot; a script's keys are always one tenant's. Reservations are leases: a sorted set
orders them by expiry, and each admission first reclaims the tenant's expired ones, releasing
their day/month holds and concurrency slots, so a crashed gateway leaks nothing.

When Redis can not be reached the configured policy answers: `closed` (the default) rejects
with `store_unavailable`, `open` admits without accounting. Neither raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from respublica.serving.gateway.contracts import Admission, Principal, Rejection, Reservation
from respublica.serving.gateway.db.repo import SpendTotal
from respublica.serving.gateway.quota.arithmetic import (
    PERIOD_GRACE_S,
    next_month,
    plan_admission,
    settle_keys,
)
from respublica.serving.gateway.quota.base import (
    LATE_SETTLE_S,
    FailPolicy,
    QuotaReservation,
    answer,
    new_reservation_id,
    seed_values,
    started_at,
    unavailable,
)

log = logging.getLogger(__name__)

# Shared by both scripts: add to a counter that still exists, never below zero.
_ADJUST = """
local function adjust(key, amount)
  if redis.call('EXISTS', key) == 1 then
    local v = redis.call('INCRBY', key, amount)
    if v < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
  end
end
"""

# KEYS: leases (zset by expiry), lease data (hash id -> json), expired (zset by reclaim time),
#       then (current, previous) per check.
# ARGV: now, id, expires_at, lease json, late-settle window, structure ttl, n, then per check
#       (cost, limit or '', previous weight, ttl).
_ADMIT = (
    _ADJUST
    + """
local now = tonumber(ARGV[1])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local data = redis.call('HGET', KEYS[2], id)
  if data then
    local lease = cjson.decode(data)
    for _, key in ipairs(lease.p) do adjust(key, -lease.t) end
    for _, key in ipairs(lease.s) do adjust(key, -1) end
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZADD', KEYS[3], now, id)
  end
  redis.call('ZREM', KEYS[1], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[5]))

local n = tonumber(ARGV[7])
local out = {0}
local failed = 0
for i = 1, n do
  local cur = tonumber(redis.call('GET', KEYS[2 + 2 * i]) or '0')
  local prev = 0
  if KEYS[3 + 2 * i] ~= KEYS[2 + 2 * i] then prev = tonumber(redis.call('GET', KEYS[3 + 2 * i]) or '0') end
  local a = 7 + 4 * (i - 1)
  out[2 * i] = cur
  out[2 * i + 1] = prev
  if failed == 0 and ARGV[a + 2] ~= '' then
    if cur + prev * tonumber(ARGV[a + 3]) + tonumber(ARGV[a + 1]) > tonumber(ARGV[a + 2]) then failed = i end
  end
end
out[1] = failed
if failed == 0 then
  for i = 1, n do
    local a = 7 + 4 * (i - 1)
    redis.call('INCRBY', KEYS[2 + 2 * i], ARGV[a + 1])
    redis.call('EXPIRE', KEYS[2 + 2 * i], ARGV[a + 4])
  end
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
  for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ARGV[6]) end
end
return out
"""
)

# KEYS: leases, lease data, expired, then the reservation's day/month counters.
# ARGV: id, used tokens. Returns 1 settled, 2 charged late (reclaimed before), 0 nothing to do.
_SETTLE = (
    _ADJUST
    + """
local id = ARGV[1]
local used = tonumber(ARGV[2])
local data = redis.call('HGET', KEYS[2], id)
if data then
  local lease = cjson.decode(data)
  for _, key in ipairs(lease.k) do adjust(key, used - lease.t) end
  for _, key in ipairs(lease.s) do adjust(key, -1) end
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  return 1
end
if redis.call('ZSCORE', KEYS[3], id) then
  for i = 4, #KEYS do adjust(KEYS[i], used) end
  redis.call('ZREM', KEYS[3], id)
  return 2
end
return 0
"""
)

_STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class RedisQuotaStore:
    shared = True

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        lease_s: float = 900.0,
        fail_policy: FailPolicy = "closed",
        prefix: str = "rp",
        op_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lease_s = lease_s
        self.fail_policy = fail_policy
        self.prefix = prefix
        self._client = client
        self._op_timeout_s = op_timeout_s
        self._clock = clock
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self._last_warning = 0.0

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 1.0, **kwargs: Any) -> RedisQuotaStore:
        """A store on its own connection pool; no client-side retries, the fail policy decides."""
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        return cls(client, op_timeout_s=2 * timeout_s, **kwargs)

    def key(self, tenant: str, name: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:{name}"

    def _structures(self, tenant: str) -> list[str]:
        return [self.key(tenant, "leases"), self.key(tenant, "lease"), self.key(tenant, "expired")]

    def _warn(self, what: str, exc: BaseException) -> None:
        # One line per 10 s at most: a Redis outage must not flood the logs.
        now = time.monotonic()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning(
                "quota store unreachable during %s (%s): policy fail-%s",
                what,
                type(exc).__name__,
                self.fail_policy,
            )

    async def admit(self, principal: Principal, tokens: int) -> Admission | Rejection:
        now = self._clock()
        tenant = principal.tenant
        plan = plan_admission(principal, tokens, now, self.lease_s)
        rid = new_reservation_id()
        k = self.key
        lease = {
            "t": tokens,
            "k": [k(tenant, n) for n in plan.keys.tokens],
            "p": [k(tenant, n) for n in plan.keys.periods],
            "s": [k(tenant, n) for n in plan.keys.slots],
        }
        keys = self._structures(tenant)
        args: list[Any] = [
            repr(now),
            rid,
            repr(now + self.lease_s),
            json.dumps(lease),
            repr(LATE_SETTLE_S),
            int(2 * self.lease_s + LATE_SETTLE_S),
            len(plan.checks),
        ]
        for c in plan.checks:
            keys += [k(tenant, c.key), k(tenant, c.prev_key or c.key)]
            args += [c.cost, "" if c.limit is None else c.limit, repr(c.prev_weight), c.ttl_s]
        try:
            raw = await asyncio.wait_for(self._admit(keys=keys, args=args), self._op_timeout_s)
        except _STORE_ERRORS as exc:
            self._warn("admission", exc)
            return unavailable(principal, tokens, now, self.lease_s, self.fail_policy)
        values = [(int(raw[1 + 2 * i]), int(raw[2 + 2 * i])) for i in range(len(plan.checks))]
        return answer(principal, plan, values, rid, self.lease_s)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        if isinstance(reservation, QuotaReservation) and reservation.unaccounted:
            return
        tenant = reservation.tenant
        periods = settle_keys(reservation.subject, started_at(reservation, self.lease_s)).periods
        keys = self._structures(tenant) + [self.key(tenant, n) for n in periods]
        try:
            await asyncio.wait_for(
                self._settle(keys=keys, args=[reservation.id, max(0, used_tokens)]), self._op_timeout_s
            )
        except _STORE_ERRORS as exc:
            # The lease runs out and releases the hold; the ledger still has the usage.
            self._warn("settlement", exc)

    async def seed(self, day: Sequence[SpendTotal], month: Sequence[SpendTotal]) -> None:
        """Rebuild this day's and month's spend from the ledger where Redis has none (e.g. it restarted)."""
        now = self._clock()
        ttl = int(next_month(now) - now + PERIOD_GRACE_S)
        try:
            for (tenant, name), tokens in seed_values(day, month, now).items():
                await self._client.set(self.key(tenant, name), tokens, nx=True, ex=ttl)
        except _STORE_ERRORS as exc:
            self._warn("seeding", exc)

    async def spent(self, tenant: str, name: str) -> int:
        """A counter's value (tests and diagnostics)."""
        value = await self._client.get(self.key(tenant, name))
        return int(value) if value is not None else 0

    async def close(self) -> None:
        await self._client.aclose()
