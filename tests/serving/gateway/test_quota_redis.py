"""What only the Redis store has: several processes on one server, and a server that goes away."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from respublica.serving.gateway.contracts import Admission, Limits, Principal, Rejection
from respublica.serving.gateway.quota import QuotaReservation, RedisQuotaStore
from respublica.serving.gateway.quota.arithmetic import day_name, minute_index


def caller(limits: Limits) -> Principal:
    return Principal(tenant="acme", subject="key1", tenant_limits=limits)


async def test_two_stores_on_one_redis_share_state(redis_url: str) -> None:
    stores = [RedisQuotaStore.from_url(redis_url, prefix="shared-test") for _ in range(3)]
    try:
        await stores[0]._client.flushdb()
        who = caller(Limits(tokens_per_day=1000, max_concurrent=50))
        results = await asyncio.gather(*(stores[i % 3].admit(who, 100) for i in range(30)))
        held = [r for r in results if isinstance(r, Admission)]
        assert len(held) == 10
        for i, admission in enumerate(held):
            await stores[(i + 1) % 3].settle(admission.reservation, 50)  # settled by another process
        assert await stores[2].spent("acme", f"t:d:{day_name(time.time())}") == 500
        assert await stores[1].spent("acme", "t:cc") == 0
    finally:
        for store in stores:
            await store.close()


async def test_all_keys_of_a_tenant_share_one_hash_tag(redis_url: str) -> None:
    store = RedisQuotaStore.from_url(redis_url, prefix="tag-test", lease_s=5)
    client = aioredis.Redis.from_url(redis_url)
    try:
        # Every kind of counter: a minute window or concurrency is counted only where limited.
        who = caller(Limits(requests_per_minute=100, tokens_per_minute=1000, max_concurrent=5))
        result = await store.admit(who, 10)
        assert isinstance(result, Admission)
        keys = [k.decode() async for k in client.scan_iter(match="tag-test:*")]
        assert len(keys) >= 10
        assert all("{acme}" in k for k in keys)
        # Redis Cluster hashes only the first {...} of a key: one tenant, one slot.
        assert all(k.split("{", 1)[1].split("}", 1)[0] == "acme" for k in keys)
        assert len({key_slot(k.encode()) for k in keys}) == 1
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.parametrize("policy", ["closed", "open"])
async def test_redis_gone_follows_the_fail_policy(
    spawn_redis: Callable[[], Any], policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = spawn_redis()
    store = RedisQuotaStore.from_url(server.url, fail_policy=policy, timeout_s=0.5)  # type: ignore[arg-type]
    try:
        who = caller(Limits(tokens_per_day=1000))
        before = await store.admit(who, 100)
        assert isinstance(before, Admission)
        server.stop()
        with caplog.at_level(logging.WARNING):
            during = await asyncio.wait_for(store.admit(who, 100), 10)
            await asyncio.wait_for(store.settle(before.reservation, 50), 10)  # must not raise
        if policy == "closed":
            assert isinstance(during, Rejection)
            assert during.reason == "store_unavailable"
            assert "unreachable" in during.message
        else:
            assert isinstance(during, Admission)
            await store.settle(during.reservation, 10)  # unaccounted: a no-op, no exception
        assert "quota store unreachable" in caplog.text
    finally:
        await store.close()


async def until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - background retries, no event to wait on
            await asyncio.sleep(0.05)


async def test_a_settlement_that_fails_is_retried_and_charges_the_usage(redis_url: str) -> None:
    prefix = f"retry-{time.monotonic_ns()}"
    store = RedisQuotaStore.from_url(redis_url, prefix=prefix, timeout_s=0.1)
    store.retry_delays_s = (0.3,) * 10
    admin = aioredis.Redis.from_url(redis_url)
    day = f"t:d:{day_name(time.time())}"
    try:
        who = caller(Limits(tokens_per_day=10_000))
        held = await store.admit(who, 100)
        assert isinstance(held, Admission)
        await admin.execute_command("CLIENT", "PAUSE", "700", "ALL")  # Redis stalls: the settle times out
        await store.settle(held.reservation, 250)  # more than reserved: charged in full
        assert store.pending_settlements == 1
        await until(lambda: store.pending_settlements == 0)
        assert await store.spent("acme", day) == 250
        assert await store.spent("acme", "t:cc") == 0
    finally:
        await admin.aclose()
        await store.close()


async def test_an_admission_that_times_out_is_released(redis_url: str) -> None:
    prefix = f"lost-{time.monotonic_ns()}"
    store = RedisQuotaStore.from_url(redis_url, prefix=prefix, timeout_s=0.1)
    store.retry_delays_s = (0.3,) * 10
    admin = aioredis.Redis.from_url(redis_url)
    try:
        who = caller(Limits(tokens_per_day=10_000))
        await admin.execute_command("CLIENT", "PAUSE", "700", "ALL")
        refused = await store.admit(who, 100)  # the script may still run once Redis resumes
        assert isinstance(refused, Rejection) and refused.reason == "store_unavailable"
        assert store.pending_settlements == 1  # its release, in the background
        await until(lambda: store.pending_settlements == 0)
        assert await store.spent("acme", f"t:d:{day_name(time.time())}") == 0
        assert await store.spent("acme", "t:cc") == 0
    finally:
        await admin.aclose()
        await store.close()


async def test_a_release_that_overtakes_its_admission_keeps_it_from_holding_anything(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The admission's connection stalls, its answer times out, and its release (on another
    # connection) reaches Redis before the admission script does.
    from respublica.serving.gateway.quota import redis_store

    store = RedisQuotaStore.from_url(redis_url, prefix=f"overtaken-{time.monotonic_ns()}", lease_s=60)
    try:
        monkeypatch.setattr(redis_store, "new_reservation_id", lambda: "overtaken")
        now = time.time()
        lost = QuotaReservation(
            id="overtaken", tenant="acme", subject="key1", tokens=100, expires_at=now + 60, started_at=now
        )
        await store._settle_once(lost, 0, release=True)  # finds nothing to release
        late = await store.admit(caller(Limits(tokens_per_day=10_000, max_concurrent=1)), 100)
        assert isinstance(late, Rejection) and late.reason == "store_unavailable"
        assert await store.spent("acme", f"t:d:{day_name(time.time())}") == 0
        assert await store.spent("acme", "t:cc") == 0
        monkeypatch.setattr(redis_store, "new_reservation_id", lambda: "another")
        assert isinstance(await store.admit(caller(Limits(max_concurrent=1)), 100), Admission)
    finally:
        await store.close()


async def test_an_admission_whose_connection_breaks_after_sending_is_released(redis_url: str) -> None:
    # Not only a timeout: a connection reset after the script was sent leaves it just as unknown.
    prefix = f"reset-{time.monotonic_ns()}"
    store = RedisQuotaStore.from_url(redis_url, prefix=prefix)
    store.retry_delays_s = (0.05,) * 5
    await store._client.set(store._epoch_key("acme"), "e1")  # a tenant the store has counted before
    sent = store._admit

    async def ran_then_broke(**kwargs: Any) -> Any:
        await sent(**kwargs)
        raise RedisConnectionError("Connection closed by server.")

    store._admit = ran_then_broke  # type: ignore[assignment]
    # The minute window by the clock the store reads; a test that straddles a minute edge retries.
    minute = f"t:tk:{minute_index(time.time())}"
    try:
        refused = await store.admit(caller(Limits(tokens_per_day=10_000, tokens_per_minute=10_000)), 100)
        assert isinstance(refused, Rejection) and refused.reason == "store_unavailable"
        assert await store.spent("acme", f"t:d:{day_name(time.time())}") == 100  # held, by nobody
        if minute_index(time.time()) != int(minute.rsplit(":", 1)[1]):
            pytest.skip("the minute turned during the admission")
        assert await store.spent("acme", minute) == 100  # and in the minute window it was counted in
        await until(lambda: store.pending_settlements == 0)
        assert await store.spent("acme", f"t:d:{day_name(time.time())}") == 0
        assert await store.spent("acme", minute) == 0  # released from both
        assert await store.spent("acme", "t:cc") == 0
    finally:
        await store.close()


async def test_lease_renewal_goes_on_past_a_lease_it_can_not_renew(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from respublica.serving.gateway.quota import redis_store

    prefix = f"renew-{time.monotonic_ns()}"
    now = [time.time()]
    store = RedisQuotaStore.from_url(redis_url, prefix=prefix, lease_s=10, clock=lambda: now[0])
    admin = aioredis.Redis.from_url(redis_url)
    try:
        who = caller(Limits(max_concurrent=5))
        held = []
        for _ in range(3):
            result = await store.admit(who, 10)
            assert isinstance(result, Admission)
            held.append(result.reservation)
        # A tenant whose lease set is not a sorted set: renewing its lease fails in Redis.
        await admin.set(f"{prefix}:{{broken}}:leases", "not a zset")
        broken = QuotaReservation(
            id="broken", tenant="broken", subject="key1", tokens=1, expires_at=now[0] + 10, started_at=now[0]
        )
        monkeypatch.setattr(redis_store, "EXTEND_BATCH", 2)  # round trips, the first one failing in part
        for _ in range(3):  # 18 s, longer than the lease
            now[0] += 6
            await store.extend([broken, *held])
        assert await store.spent("acme", "t:cc") == 3
    finally:
        await admin.aclose()
        await store.close()


def test_scripts_touch_only_keys_they_declare() -> None:
    # Redis Cluster routes a script by its KEYS: a key it reaches by other means (a name read from
    # a value) may live elsewhere. Every key argument must come from KEYS (adjust() gets them too).
    import re

    from respublica.serving.gateway.quota import redis_store

    for script in (redis_store._ADMIT, redis_store._SETTLE, redis_store._EXTEND):
        calls = re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", script)
        assert calls
        for command, key in calls:
            assert key.startswith("KEYS[") or (command in {"EXISTS", "INCRBY", "SET"} and key == "key"), (
                command,
                key,
            )
        for argument in re.findall(r"adjust\(([^,]+),", script.split("end\n", 1)[-1]):
            assert argument.startswith("KEYS["), argument


async def test_a_new_tenants_first_requests_on_several_replicas_are_not_refused(redis_url: str) -> None:
    """A tenant Redis has never seen has no epoch: the first admission on each replica races to give
    it one. The replica that loses the race waits for the winner's epoch instead of answering 503."""
    stores = [RedisQuotaStore.from_url(redis_url, prefix="first-contact-test") for _ in range(3)]
    for store in stores:
        store.rebuild_delay_s = 0.2
    try:
        await stores[0]._client.flushdb()
        who = caller(Limits(tokens_per_day=1000, max_concurrent=50))
        results = await asyncio.gather(*(stores[i % 3].admit(who, 100) for i in range(30)))
        reasons = sorted({r.reason for r in results if isinstance(r, Rejection)})
        assert "store_unavailable" not in reasons, reasons
        assert sum(isinstance(r, Admission) for r in results) == 10
    finally:
        for store in stores:
            await store.close()


def test_a_recreated_counter_lives_by_its_kind_whatever_its_subject() -> None:
    """An OIDC subject is arbitrary text: one containing `:tk:` must not make its day counter a
    minute window's (a settlement that recreates it after a loss would let it expire in minutes)."""
    from respublica.serving.gateway.quota.arithmetic import WINDOW_TTL_S
    from respublica.serving.gateway.quota.redis_store import counter_ttl

    started = 1_795_000_030.0
    assert counter_ttl("s:odd:tk:sub:d:20261119", started) > 86_400
    assert counter_ttl("s:odd:tk:sub:m:202611", started) > 86_400
    assert counter_ttl("s:odd:tk:sub:tk:29916667", started) == WINDOW_TTL_S
    assert counter_ttl("t:tk:29916667", started) == WINDOW_TTL_S


async def test_a_settlement_whose_caller_is_cancelled_still_lands(redis_url: str) -> None:
    """The QuotaStore contract the request path relies on at shutdown (routes/call.py): a cancel of
    the request while its settlement is on the wire does not stop the settlement."""
    prefix = f"cancel-{time.monotonic_ns()}"
    store = RedisQuotaStore.from_url(redis_url, prefix=prefix)
    script = store._settle
    on_the_wire, go = asyncio.Event(), asyncio.Event()

    async def held(**kwargs: Any) -> Any:
        on_the_wire.set()
        await go.wait()
        return await script(**kwargs)

    try:
        admission = await store.admit(caller(Limits(tokens_per_day=1000)), 100)
        assert isinstance(admission, Admission)
        store._settle = held  # type: ignore[assignment]
        request = asyncio.create_task(store.settle(admission.reservation, 30))
        await asyncio.wait_for(on_the_wire.wait(), 5)
        request.cancel()  # the server shuts down
        with pytest.raises(asyncio.CancelledError):
            await request
        go.set()
        day = f"t:d:{day_name(time.time())}"
        async with asyncio.timeout(5):
            while await store.spent("acme", day) != 30:  # noqa: ASYNC110 - Redis has no event for it
                await asyncio.sleep(0.02)
        assert await store.spent("acme", "t:cc") == 0
    finally:
        await store.close()
