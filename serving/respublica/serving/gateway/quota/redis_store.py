"""The Redis quota store: several gateway processes or replicas share one set of counters.

Each admission, settlement and lease renewal is one Lua script, so it is atomic. Every key of a
tenant carries the tenant as a hash tag (`rp:{tenant}:...`), so one tenant's keys live in one
Redis Cluster slot; a script's keys are always one tenant's, and all are declared in KEYS.
Reservations are leases: sorted sets order them by expiry, and concurrency is the number of live
leases, so a crashed gateway's slots free themselves when its leases run out. Its token holds stay
charged: nobody reported what those requests used, and a budget must never be overshot. A
settlement that arrives later (from a request that outlived Redis trouble) charges what it used.
A settlement that fails is retried in the background, a bounded number of times.

When Redis can not be reached the configured policy answers: `closed` (the default) rejects
with `store_unavailable`; `open` admits without shared accounting, but never past a limit this
process can still check on its own: the admission goes through a local in-memory store (the same
arithmetic), so concurrency, the per-minute windows and a single request larger than a budget are
still refused, and the day and month budgets count what this process admitted during the outage.
A script that Redis runs and rejects (a bug, never an outage: inputs are bounded before they reach
it, see `MAX_RESERVATION`) fails closed whatever the policy. Neither raises.

A connection that broke under the pool (Redis restarted) is retried once on a fresh connection,
so a restart costs no request an error; `health_check_interval` pings connections idle for long.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from respublica.serving.gateway.contracts import Admission, Principal, Rejection, Reservation
from respublica.serving.gateway.db.repo import SpendTotal
from respublica.serving.gateway.quota.arithmetic import (
    MAX_RESERVATION,
    PERIOD_GRACE_S,
    WINDOW_TTL_S,
    next_month,
    plan_admission,
    settle_keys,
)
from respublica.serving.gateway.quota.base import (
    LATE_SETTLE_S,
    STORE_RETRY_S,
    FailPolicy,
    QuotaReservation,
    answer,
    new_reservation_id,
    seed_values,
    started_at,
    unavailable,
)
from respublica.serving.gateway.quota.memory import MemoryQuotaStore

log = logging.getLogger(__name__)

# Add to a counter that still exists, never below zero.
_ADJUST = """
local function adjust(key, amount)
  if redis.call('EXISTS', key) == 1 then
    local v = redis.call('INCRBY', key, amount)
    if v < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
  end
end
"""

# Every key a script touches is in KEYS (Redis Cluster routes by them), and all of them carry the
# tenant's hash tag. Structures, KEYS[1..4]: the tenant's live leases (zset id -> expiry), lease
# data (hash id -> json), reclaimed leases (zset id -> when), the caller's live leases (zset).
# Concurrency is the count of live leases in a zset, so an expired lease frees its slot without
# the script touching another caller's keys; its token hold stays charged (the safe side: usage
# nobody reported is not refunded) until a late settlement says what it used.

# KEYS: the four structures, then (current, previous) per check, then the id's release tombstone,
# then the tenant's epoch. ARGV: now, id, expires_at, lease json, late-settle window, structure
# ttl, n, then per check (cost, limit or '', previous weight, ttl, kind: 'c' counter or 'z' live
# leases in a zset). Returns {-1} when the id was released before this script ran (see
# `_SETTLE`), {-2} when the tenant has no epoch (Redis lost its data, or never had the tenant: the
# gateway rebuilds it from the ledger first), else {failed check or 0, then (current, previous)
# per check, then the epoch}.
_ADMIT = """
if redis.call('EXISTS', KEYS[#KEYS - 1]) == 1 then return {-1} end
local epoch = redis.call('GET', KEYS[#KEYS])
if not epoch then return {-2} end
local now = tonumber(ARGV[1])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  if redis.call('HEXISTS', KEYS[2], id) == 1 then redis.call('ZADD', KEYS[3], now, id) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local horizon = now - tonumber(ARGV[5])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', horizon)) do
  redis.call('HDEL', KEYS[2], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', horizon)

local n = tonumber(ARGV[7])
local out = {0}
local failed = 0
for i = 1, n do
  local a = 7 + 5 * (i - 1)
  local cur, prev = 0, 0
  if ARGV[a + 5] == 'z' then
    cur = redis.call('ZCOUNT', KEYS[3 + 2 * i], '(' .. ARGV[1], '+inf')
  else
    cur = tonumber(redis.call('GET', KEYS[3 + 2 * i]) or '0')
    if KEYS[4 + 2 * i] ~= KEYS[3 + 2 * i] then prev = tonumber(redis.call('GET', KEYS[4 + 2 * i]) or '0') end
  end
  out[2 * i] = cur
  out[2 * i + 1] = prev
  if failed == 0 and ARGV[a + 2] ~= '' then
    if cur + prev * tonumber(ARGV[a + 3]) + tonumber(ARGV[a + 1]) > tonumber(ARGV[a + 2]) then failed = i end
  end
end
out[1] = failed
if failed == 0 then
  for i = 1, n do
    local a = 7 + 5 * (i - 1)
    if ARGV[a + 5] ~= 'z' then
      redis.call('INCRBY', KEYS[3 + 2 * i], ARGV[a + 1])
      redis.call('EXPIRE', KEYS[3 + 2 * i], ARGV[a + 4])
    end
  end
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
  for k = 1, 4 do redis.call('EXPIRE', KEYS[k], ARGV[6]) end
end
out[2 * n + 2] = epoch
return out
"""

# KEYS: the four structures, the id's release tombstone, the tenant's epoch, then the token
# counters its admission charged (a minute window where limited, day, month). ARGV: id, used
# tokens, tombstone ttl ('' for an ordinary settlement), the reservation's epoch, then each token
# counter's ttl.
# Returns 1 settled in time, 2 settled late (expired before), 3 charged in full (the store lost
# its state since the admission, and the hold with it), 0 nothing to do.
# The release of an admission whose answer was lost can overtake the admission itself (the
# admission's connection stalled, the release went on another): finding nothing, it leaves a
# tombstone, and the admission, when it finally runs, takes nothing.
_SETTLE = (
    _ADJUST
    + """
local id = ARGV[1]
local data = redis.call('HGET', KEYS[2], id)
if not data then
  if ARGV[3] ~= '' then redis.call('SET', KEYS[5], '1', 'EX', ARGV[3]) end
  if ARGV[4] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[4] then
    for i = 7, #KEYS do
      redis.call('INCRBY', KEYS[i], ARGV[2])
      redis.call('EXPIRE', KEYS[i], ARGV[i - 2])
    end
    return 3
  end
  return 0
end
local live = redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[3], id)
redis.call('HDEL', KEYS[2], id)
local lease = cjson.decode(data)
for i = 7, #KEYS do adjust(KEYS[i], tonumber(ARGV[2]) - lease.t) end
if live == 1 then return 1 end
return 2
"""
)

# KEYS: the tenant's epoch, the rebuild lock, then the day and month counters to rebuild. ARGV:
# the new epoch, the counters' ttl, then each counter's tokens from the ledger. Adds to what is
# there (only settlements of requests admitted before the loss, charged in full: the safe side).
_RESEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DEL', KEYS[2]) return 0 end
for i = 3, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[i])
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: the four structures. ARGV: now, id, new expiry, structure ttl. 1: renewed, 0: not live.
_EXTEND = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if score and tonumber(score) > tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[2])
  redis.call('ZADD', KEYS[4], 'XX', ARGV[3], ARGV[2])
  for k = 1, 4 do redis.call('EXPIRE', KEYS[k], ARGV[4]) end
  return 1
end
return 0
"""

# (tenant, now) -> that tenant's (day, month) spend per subject, from the ledger.
SpendSource = Callable[[str, float], Awaitable[tuple[Sequence[SpendTotal], Sequence[SpendTotal]]]]


def counter_ttl(name: str, started: float) -> int:
    """A token counter's lifetime when a settlement has to create it (after a loss). The kind is
    the name's second-to-last part (`<scope>:tk:<minute>`, `<scope>:d:<day>`): an OIDC subject
    in the scope may itself contain `:tk:`."""
    if name.rsplit(":", 2)[-2] == "tk":
        return WINDOW_TTL_S
    return int(next_month(started) - started + PERIOD_GRACE_S)


# A failed settlement is retried after these delays; then given up, leaving the reservation charged.
SETTLE_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
MAX_PENDING_SETTLEMENTS = 10_000
# Lease renewals sent per round trip.
EXTEND_BATCH = 500

# `asyncio.timeout`, not `wait_for`, bounds each round trip: on Python 3.11 `wait_for` swallows a
# cancel that lands as the operation completes (see ledger.py), and a shutdown must not be lost.
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
        self._reseed = client.register_script(_RESEED)
        self._settle = client.register_script(_SETTLE)
        self._extend = client.register_script(_EXTEND)
        self._last_warning = 0.0
        self._last_overflow = 0.0
        self._pending: set[asyncio.Task[None]] = set()
        self.retry_delays_s: tuple[float, ...] = SETTLE_RETRY_DELAYS_S
        # Fail-open admissions go through this process's own counters (see the module docstring).
        self._local = MemoryQuotaStore(lease_s=lease_s, clock=clock)
        self.errors = 0  # failed store operations (a metric: the quota store's health)
        self.up = True  # the last operation reached the store
        # Rebuilding a tenant whose state was lost: where its spend comes from (the ledger, by
        # tenant: its day and month totals) and what runs first (this process's ledger flushed).
        self.rebuild_from: SpendSource | None = None
        self.before_rebuild: Callable[[], Awaitable[None]] | None = None
        self.rebuild_delay_s = 2.0
        self.rebuilds = 0  # tenants found lost and rebuilt (a metric)
        self._seen: set[str] = set()  # tenants with an epoch this process admitted in
        self._rebuilding: dict[str, asyncio.Future[bool]] = {}

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 1.0, **kwargs: Any) -> RedisQuotaStore:
        """A store on its own connection pool. A broken connection (Redis restarted: every pooled
        connection is stale) is retried once on a new one; a timeout is not retried, the fail
        policy decides (a retried timeout would double the wait of every request)."""
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(
                ExponentialBackoff(cap=0.05, base=0.005), 1, supported_errors=(RedisConnectionError,)
            ),
            health_check_interval=5,
        )
        return cls(client, op_timeout_s=2 * timeout_s, **kwargs)

    def key(self, tenant: str, name: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:{name}"

    def _structures(self, tenant: str, subject: str) -> list[str]:
        return [
            self.key(tenant, "leases"),
            self.key(tenant, "lease"),
            self.key(tenant, "expired"),
            self.key(tenant, f"leases:{subject}"),
        ]

    def _structure_ttl(self) -> int:
        return int(2 * self.lease_s + LATE_SETTLE_S)

    def _tombstone(self, tenant: str, rid: str) -> str:
        return self.key(tenant, f"released:{rid}")

    def _warn(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self.up = False
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

    async def admit(
        self, principal: Principal, tokens: int, *, rebuild: bool = True
    ) -> Admission | Rejection:
        now = self._clock()
        tenant = principal.tenant
        plan = plan_admission(principal, tokens, now)
        rid = new_reservation_id()
        k = self.key
        keys = self._structures(tenant, principal.subject)
        args: list[Any] = [
            repr(now),
            rid,
            repr(now + self.lease_s),
            json.dumps({"t": tokens}),
            repr(LATE_SETTLE_S),
            self._structure_ttl(),
            len(plan.checks),
        ]
        for c in plan.checks:
            if c.reason == "concurrency":
                # Counted as live leases: the tenant's zset, or this caller's.
                zset = keys[0] if c.scope == "tenant" else keys[3]
                keys += [zset, zset]
                kind = "z"
            else:
                keys += [k(tenant, c.key), k(tenant, c.prev_key or c.key)]
                kind = "c"
            args += [c.cost, "" if c.limit is None else c.limit, repr(c.prev_weight), c.ttl_s, kind]
        keys += [self._tombstone(tenant, rid), self._epoch_key(tenant)]
        try:
            async with asyncio.timeout(self._op_timeout_s):
                raw = await self._admit(keys=keys, args=args)
            if int(raw[0]) == -2 and rebuild:
                # The tenant's state is gone: rebuild it from the ledger, then admit once more.
                if await self._rebuild(tenant):
                    return await self.admit(principal, tokens, rebuild=False)
                return await self._unavailable(principal, tokens, now)
        except ResponseError as exc:
            # Redis ran the script and refused it: not an outage, and never admitted unaccounted.
            self.errors += 1
            log.error("quota script failed during admission: %s", type(exc).__name__)
            return Rejection("store_unavailable", "the quota store refused the admission", STORE_RETRY_S)
        except _STORE_ERRORS as exc:
            self._warn("admission", exc)
            # Whatever failed (a timeout, a connection reset after the script was sent), the
            # script may have run or may still run: release the reservation (nothing was sent
            # upstream), or it would stay charged with nobody holding it.
            lost = QuotaReservation(
                id=rid,
                tenant=tenant,
                subject=principal.subject,
                tokens=tokens,
                expires_at=now + self.lease_s,
                started_at=now,
                token_keys=plan.keys.tokens,
            )
            self._settle_later(lost, 0, self.retry_delays_s, release=True)
            return await self._unavailable(principal, tokens, now)
        self.up = True
        if int(raw[0]) < 0:  # released before it ran (a lost answer's release), or no epoch yet
            return await self._unavailable(principal, tokens, now)
        n = len(plan.checks)
        values = [(int(raw[1 + 2 * i]), int(raw[2 + 2 * i])) for i in range(n)]
        epoch = raw[1 + 2 * n]
        epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        self._seen.add(tenant)
        return answer(principal, plan, values, rid, self.lease_s, epoch)

    async def _unavailable(self, principal: Principal, tokens: int, now: float) -> Admission | Rejection:
        """The fail policy's answer; fail-open only through this process's own counters."""
        if self.fail_policy != "open":
            return unavailable(principal, tokens, now, self.lease_s, self.fail_policy)
        local = await self._local.admit(principal, tokens)
        if isinstance(local, Rejection):
            return local
        held = local.reservation
        assert isinstance(held, QuotaReservation)
        return Admission(dataclasses.replace(held, unaccounted=True), local.headers)

    def _epoch_key(self, tenant: str) -> str:
        return self.key(tenant, "epoch")

    async def _rebuild(self, tenant: str) -> bool:
        """Rebuild a tenant's day and month spend from the ledger and give it an epoch; True once it
        has one. One rebuild per tenant at a time in this process, one across replicas (a lock)."""
        running = self._rebuilding.get(tenant)
        if running is None:
            running = asyncio.ensure_future(self._rebuild_once(tenant))
            self._rebuilding[tenant] = running
            running.add_done_callback(lambda _: self._rebuilding.pop(tenant, None))
        try:
            return await asyncio.shield(running)
        except Exception as exc:
            self._warn("rebuilding spend", exc)
            return False

    async def _rebuild_once(self, tenant: str) -> bool:
        lost = tenant in self._seen  # this process saw the tenant's state before: Redis lost it
        self._seen.discard(tenant)
        if lost:
            self.rebuilds += 1
            log.error("quota store lost tenant %s's state (restart, flush, eviction): rebuilding", tenant)
        if self.before_rebuild is not None:
            await self.before_rebuild()  # this process's ledger lines into the database first
        lock = self.key(tenant, "rebuild")
        if not await self._client.set(lock, "1", nx=True, ex=30):
            # Another replica rebuilds (or gives a new tenant its first epoch): wait for its epoch
            # rather than refuse, or every replica but one answers 503 at a tenant's first requests.
            return await self._epoch_from_another_replica(tenant, lock)
        if lost:
            # Every replica's ledger writes what it holds within its interval (and flushes when
            # it meets the lost state): wait for them, so the rebuilt spend misses none of it.
            await asyncio.sleep(self.rebuild_delay_s)
        now = self._clock()
        day, month = await self.rebuild_from(tenant, now) if self.rebuild_from is not None else ([], [])
        values = {name: v for (t, name), v in seed_values(day, month, now).items() if t == tenant}
        ttl = int(next_month(now) - now + PERIOD_GRACE_S)
        keys = [self._epoch_key(tenant), lock, *(self.key(tenant, name) for name in values)]
        args: list[Any] = [new_reservation_id(), ttl, *values.values()]
        async with asyncio.timeout(self._op_timeout_s):
            await self._reseed(keys=keys, args=args)
        return True

    async def _epoch_from_another_replica(self, tenant: str, lock: str) -> bool:
        """True once the replica holding `lock` has written the tenant's epoch; False if the lock goes
        without one (that replica failed: the next admission tries again) or the wait runs out."""
        deadline = time.monotonic() + self.rebuild_delay_s + 4 * self._op_timeout_s + 1.0
        while time.monotonic() < deadline:
            async with asyncio.timeout(self._op_timeout_s):
                epoch, locked = await self._client.mget([self._epoch_key(tenant), lock])
            if epoch is not None:
                return True
            if locked is None:
                return False
            await asyncio.sleep(0.05)
        return False

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Completes even if its caller is cancelled meanwhile (the `QuotaStore` contract: a server
        shutting down cancels the requests still settling): the round trip runs shielded."""
        await asyncio.shield(self._settle_shielded(reservation, used_tokens))

    async def _settle_shielded(self, reservation: Reservation, used_tokens: int) -> None:
        if isinstance(reservation, QuotaReservation) and reservation.unaccounted:
            # Admitted by the local counters during an outage: settled there.
            await self._local.settle(dataclasses.replace(reservation, unaccounted=False), used_tokens)
            return
        used = min(max(0, used_tokens), MAX_RESERVATION)  # never past what a counter can hold
        try:
            await self._settle_once(reservation, used)
            self.up = True
        except _STORE_ERRORS as exc:
            # Retried in the background. Until it lands the reservation stays charged, also past
            # its lease: a budget may be undercharged by nothing, at worst overcharged by the hold.
            self._warn("settlement", exc)
            self._settle_later(reservation, used, self.retry_delays_s)

    async def _settle_once(self, reservation: Reservation, used: int, *, release: bool = False) -> None:
        """Settle; `release`: the reservation's admission answer was lost, and the admission may
        not have run yet, so a settlement finding nothing leaves a tombstone that stops it."""
        tenant = reservation.tenant
        start = started_at(reservation, self.lease_s)
        named = reservation.token_keys if isinstance(reservation, QuotaReservation) else ()
        tokens = named or settle_keys(reservation.subject, start).tokens
        keys = [*self._structures(tenant, reservation.subject), self._tombstone(tenant, reservation.id)]
        keys += [self._epoch_key(tenant), *(self.key(tenant, n) for n in tokens)]
        epoch = reservation.epoch if isinstance(reservation, QuotaReservation) else ""
        args: list[Any] = [reservation.id, used, self._structure_ttl() if release else "", epoch]
        args += [counter_ttl(name, start) for name in tokens]
        async with asyncio.timeout(self._op_timeout_s):
            await self._settle(keys=keys, args=args)

    def _settle_later(
        self, reservation: Reservation, used: int, delays: Sequence[float], *, release: bool = False
    ) -> None:
        if len(self._pending) >= MAX_PENDING_SETTLEMENTS:
            if time.monotonic() - self._last_overflow >= 10.0:  # an outage must not flood the logs
                self._last_overflow = time.monotonic()
                log.error("too many settlements pending: reservation %s stays charged", reservation.id)
            return
        task = asyncio.create_task(self._retry_settle(reservation, used, delays, release))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _retry_settle(
        self, reservation: Reservation, used: int, delays: Sequence[float], release: bool
    ) -> None:
        for delay in delays:
            await asyncio.sleep(delay)
            try:
                await self._settle_once(reservation, used, release=release)
            except _STORE_ERRORS:
                continue
            log.info("reservation %s settled after a retry", reservation.id)
            return
        log.error(
            "settling reservation %s failed %d times: its %d tokens stay charged",
            reservation.id,
            len(delays) + 1,
            reservation.tokens,
        )

    async def extend(self, reservations: Sequence[Reservation]) -> None:
        """Renew the leases of requests still in flight, so a long one is never reclaimed.

        Pipelined, `EXTEND_BATCH` scripts per round trip (each one still atomic). A renewal that
        fails does not stop the others: a lease missed now is renewed on the next pass, well
        before it runs out."""
        now = self._clock()
        ttl = self._structure_ttl()
        held = [r for r in reservations if not (isinstance(r, QuotaReservation) and r.unaccounted)]
        for start in range(0, len(held), EXTEND_BATCH):
            try:
                async with asyncio.timeout(self._op_timeout_s):
                    await self._extend_batch(held[start : start + EXTEND_BATCH], now, ttl)
            except _STORE_ERRORS as exc:
                self._warn("lease renewal", exc)

    async def _extend_batch(self, batch: Sequence[Reservation], now: float, ttl: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        for reservation in batch:
            keys = self._structures(reservation.tenant, reservation.subject)
            args: list[Any] = [repr(now), reservation.id, repr(now + self.lease_s), ttl]
            await self._extend(keys=keys, args=args, client=pipe)
        results = await pipe.execute(raise_on_error=False)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            self._warn("lease renewal", failed[0])

    async def seed(self, day: Sequence[SpendTotal], month: Sequence[SpendTotal]) -> None:
        """Rebuild this day's and month's spend from the ledger where Redis has none (e.g. it restarted)."""
        now = self._clock()
        ttl = int(next_month(now) - now + PERIOD_GRACE_S)
        try:
            values = seed_values(day, month, now)
            for (tenant, name), tokens in values.items():
                await self._client.set(self.key(tenant, name), tokens, nx=True, ex=ttl)
            for tenant in {t for t, _ in values}:
                # Counted now; a tenant without spend gets its epoch at its first admission.
                await self._client.set(self._epoch_key(tenant), new_reservation_id(), nx=True)
        except _STORE_ERRORS as exc:
            self._warn("seeding", exc)

    async def spent(self, tenant: str, name: str) -> int:
        """A counter's value (tests and diagnostics); `<scope>:cc` counts live leases."""
        if name.endswith(":cc"):
            scope = name[: -len(":cc")]
            zset = self.key(tenant, "leases" if scope == "t" else f"leases:{scope[len('s:') :]}")
            return int(await self._client.zcount(zset, f"({self._clock()!r}", "+inf"))
        value = await self._client.get(self.key(tenant, name))
        return int(value) if value is not None else 0

    @property
    def pending_settlements(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        # Settlements still retrying are dropped: their reservations stay charged (the safe side).
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=1.0)
        await self._client.aclose()
