"""One suite, both stores: the in-process one and Redis (a real redis-server) decide the same."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from respublica.serving.gateway.contracts import Admission, Limits, Principal, Rejection
from respublica.serving.gateway.db.repo import SpendTotal
from respublica.serving.gateway.quota import MemoryQuotaStore, QuotaReservation, RedisQuotaStore, open_store
from respublica.serving.gateway.quota.arithmetic import day_name, month_name
from respublica.serving.gateway.quota.keeper import LeaseKeeper

Store = MemoryQuotaStore | RedisQuotaStore
MakeStore = Callable[..., Store]


def who(tenant: Limits, key: Limits | None = None, subject: str = "key1", name: str = "acme") -> Principal:
    return Principal(tenant=name, subject=subject, tenant_limits=tenant, key_limits=key)


def admitted(result: Admission | Rejection) -> Admission:
    assert isinstance(result, Admission), result
    return result


def rejected(result: Admission | Rejection, reason: str) -> Rejection:
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    return result


async def test_hundred_concurrent_streams_never_overshoot_a_budget_for_ten(
    make_store: MakeStore, clock: Any
) -> None:
    store = make_store()
    caller = who(Limits(tokens_per_day=1000))
    rng = random.Random(7)
    used: list[int] = []

    async def stream() -> None:
        result = await store.admit(caller, 100)
        if isinstance(result, Rejection):
            assert result.reason == "tokens_per_day"
            return
        await asyncio.sleep(rng.random() / 100)
        tokens = rng.randint(0, 100)
        used.append(tokens)
        await store.settle(result.reservation, tokens)

    await asyncio.wait_for(asyncio.gather(*(stream() for _ in range(100))), 30)
    assert len(used) >= 10  # settled streams free budget for later ones, never more than it holds
    day = await store.spent("acme", f"t:d:{day_name(clock.now)}")
    assert day == sum(used) <= 1000
    assert await store.spent("acme", f"s:key1:d:{day_name(clock.now)}") == sum(used)
    assert await store.spent("acme", f"t:m:{month_name(clock.now)}") == sum(used)
    assert await store.spent("acme", "t:cc") == 0


async def test_all_at_once_exactly_ten_fit(make_store: MakeStore, clock: Any) -> None:
    store = make_store()
    caller = who(Limits(tokens_per_day=1000))
    results = await asyncio.wait_for(asyncio.gather(*(store.admit(caller, 100) for _ in range(100))), 30)
    held = [r for r in results if isinstance(r, Admission)]
    assert len(held) == 10
    assert all(isinstance(r, Rejection) and r.reason == "tokens_per_day" for r in results if r not in held)
    for admission in held:
        await store.settle(admission.reservation, 40)
    assert await store.spent("acme", f"t:d:{day_name(clock.now)}") == 400
    # what was not used is free again: 600 tokens, six more requests of 100
    again = await asyncio.gather(*(store.admit(caller, 100) for _ in range(10)))
    assert sum(isinstance(r, Admission) for r in again) == 6


async def test_requests_per_minute_slide(make_store: MakeStore, clock: Any) -> None:
    store = make_store()
    caller = who(Limits(requests_per_minute=4))
    for _ in range(4):
        result = admitted(await store.admit(caller, 1))
    assert result.headers.limit_requests == 4
    assert result.headers.remaining_requests == 0
    rejection = rejected(await store.admit(caller, 1), "requests_per_minute")
    assert "4 requests per minute" in rejection.message
    # 10 s into the minute, all four in this bucket: the next minute's start plus the time for
    # 4 * (1 - t/60) + 1 <= 4, t = 15 s: 50 + 15 = 65 s.
    assert rejection.retry_after_s == pytest.approx(65.0)
    assert rejection.headers.remaining_requests == 0
    clock.advance(80)  # 30 s into the next minute: the old bucket weighs 1/2 -> 2 requests left
    admitted(await store.admit(caller, 1))
    admitted(await store.admit(caller, 1))
    rejected(await store.admit(caller, 1), "requests_per_minute")
    clock.advance(120)
    admitted(await store.admit(caller, 1))


async def test_tokens_per_minute(make_store: MakeStore, clock: Any) -> None:
    store = make_store()
    caller = who(Limits(tokens_per_minute=1000))
    first = admitted(await store.admit(caller, 600))
    assert first.headers.limit_tokens == 1000
    assert first.headers.remaining_tokens == 400
    rejected(await store.admit(caller, 600), "tokens_per_minute")
    await store.settle(first.reservation, 100)  # settling gives back what the window did not use
    admitted(await store.admit(caller, 600))
    too_big = rejected(await store.admit(caller, 1500), "tokens_per_minute")
    assert "lower max_tokens" in too_big.message


async def test_limits_set_later_start_from_what_was_counted(make_store: MakeStore, clock: Any) -> None:
    """Day and month spend is counted without a limit, so a budget set later starts from it; a
    minute window is counted only once limited (a per-minute limit set later starts then)."""
    store = make_store()
    for _ in range(3):
        first = admitted(await store.admit(who(Limits()), 100))
        await store.settle(first.reservation, 40)
    assert await store.spent("acme", f"t:d:{day_name(clock.now)}") == 120
    assert await store.spent("acme", f"s:key1:m:{month_name(clock.now)}") == 120
    limited = who(Limits(tokens_per_day=150, requests_per_minute=2))
    # The day budget sees the 120 already spent: 30 left, so 40 does not fit and 30 does.
    rejected(await store.admit(limited, 40), "tokens_per_day")
    # The minute window starts now: the three earlier requests were not counted in it.
    admitted(await store.admit(limited, 10))
    admitted(await store.admit(limited, 10))
    rejected(await store.admit(limited, 10), "requests_per_minute")


async def test_a_limit_set_mid_flight_is_not_given_back_holds_it_never_had(
    make_store: MakeStore, clock: Any
) -> None:
    """Requests admitted before a tokens-per-minute limit existed did not charge that window; when
    they settle after the limit is set, their unused holds must not come off it (or the window
    would admit past its limit)."""
    store = make_store()
    before = [admitted(await store.admit(who(Limits()), 900)) for _ in range(3)]
    limited = who(Limits(tokens_per_minute=1000))
    admitted(await store.admit(limited, 900))
    for admission in before:
        await store.settle(admission.reservation, 0)
    rejected(await store.admit(limited, 900), "tokens_per_minute")
    # The day's spend counted all four and gave back what the three did not use.
    assert await store.spent("acme", f"t:d:{day_name(clock.now)}") == 900


async def test_monthly_budget_and_retry_at_month_end(make_store: MakeStore, clock: Any) -> None:
    store = make_store()
    caller = who(Limits(tokens_per_month=500))
    admitted(await store.admit(caller, 500))
    rejection = rejected(await store.admit(caller, 1), "tokens_per_month")
    assert 0 < rejection.retry_after_s <= 31 * 86400
    assert "0 tokens left of its monthly budget of 500" in rejection.message


async def test_key_limits_apply_on_top_of_the_tenants(make_store: MakeStore) -> None:
    store = make_store()
    tenant = Limits(tokens_per_day=10_000)
    narrow = who(tenant, Limits(tokens_per_day=300), subject="small")
    wide = who(tenant, subject="big")
    admitted(await store.admit(narrow, 300))
    rejection = rejected(await store.admit(narrow, 1), "tokens_per_day")
    assert "key 'small'" in rejection.message
    admitted(await store.admit(wide, 9000))  # the tenant still has room for another key
    rejected(await store.admit(wide, 1000), "tokens_per_day")


async def test_concurrency_slots_are_released_on_settle(make_store: MakeStore) -> None:
    store = make_store()
    caller = who(Limits(max_concurrent=2))
    a = admitted(await store.admit(caller, 10))
    admitted(await store.admit(caller, 10))
    rejection = rejected(await store.admit(caller, 10), "concurrency")
    assert rejection.retry_after_s > 0
    await store.settle(a.reservation, 5)
    admitted(await store.admit(caller, 10))


async def test_settle_is_idempotent(make_store: MakeStore, clock: Any) -> None:
    store = make_store()
    caller = who(Limits(max_concurrent=5, tokens_per_day=1000))
    a = admitted(await store.admit(caller, 100))
    b = admitted(await store.admit(caller, 100))
    await store.settle(a.reservation, 30)
    await store.settle(a.reservation, 30)
    await store.settle(a.reservation, 90)
    day = f"t:d:{day_name(clock.now)}"
    assert await store.spent("acme", day) == 130  # 30 used by a, 100 still held by b
    assert await store.spent("acme", "t:cc") == 1
    await store.settle(b.reservation, 0)
    assert await store.spent("acme", day) == 30
    assert await store.spent("acme", "t:cc") == 0


async def test_a_crashed_holders_lease_expires_frees_its_slot_and_keeps_its_hold(
    make_store: MakeStore, clock: Any
) -> None:
    crashed = make_store(lease_s=30)
    caller = who(Limits(tokens_per_day=1000, max_concurrent=1))
    lost = admitted(await crashed.admit(caller, 600))
    # Redis: a second gateway process; in-process: the same one, its request task gone.
    survivor = make_store(lease_s=30) if isinstance(crashed, RedisQuotaStore) else crashed
    rejected(await survivor.admit(caller, 10), "concurrency")
    clock.advance(31)
    # The slot is free again; the hold is not given back: nobody said what the request used.
    later = admitted(await survivor.admit(caller, 10))
    day = f"t:d:{day_name(clock.now)}"
    assert await survivor.spent("acme", day) == 610
    await survivor.settle(later.reservation, 10)
    rejected(await survivor.admit(caller, 400), "tokens_per_day")
    # The lost request finishes after all: it is charged what it used, once.
    await crashed.settle(lost.reservation, 200)
    await crashed.settle(lost.reservation, 200)
    assert await survivor.spent("acme", day) == 210
    assert await survivor.spent("acme", "t:cc") == 0
    admitted(await survivor.admit(caller, 400))


async def test_usage_above_the_reservation_is_charged_in_full(make_store: MakeStore, clock: Any) -> None:
    store = make_store()
    caller = who(Limits(tokens_per_day=1000, tokens_per_minute=10_000))
    a = admitted(await store.admit(caller, 100))
    await store.settle(a.reservation, 250)  # the bound was too low: the usage counts, not the bound
    assert await store.spent("acme", f"t:d:{day_name(clock.now)}") == 250
    assert await store.spent("acme", f"s:key1:m:{month_name(clock.now)}") == 250
    rejected(await store.admit(caller, 751), "tokens_per_day")
    admitted(await store.admit(caller, 750))


async def test_renewed_leases_outlive_the_lease_time(make_store: MakeStore, clock: Any) -> None:
    store = make_store(lease_s=10)
    caller = who(Limits(max_concurrent=1, tokens_per_day=1000), Limits(max_concurrent=1))
    long_one = admitted(await store.admit(caller, 500))
    # 200 s in flight, renewed every 5 s: far past the lease and any lifetime a counter of open
    # reservations could be given from the last admission.
    for _ in range(40):
        clock.advance(5)
        await store.extend([long_one.reservation])
        rejected(await store.admit(caller, 10), "concurrency")
    assert await store.spent("acme", "t:cc") == 1
    assert await store.spent("acme", "s:key1:cc") == 1
    await store.settle(long_one.reservation, 100)
    assert await store.spent("acme", f"t:d:{day_name(clock.now)}") == 100
    assert await store.spent("acme", "t:cc") == 0
    # Renewal does not revive what already ran out.
    gone = admitted(await store.admit(caller, 10))
    clock.advance(11)
    await store.extend([gone.reservation])
    admitted(await store.admit(caller, 10))


async def test_spend_survives_a_restart_when_seeded_from_the_ledger(
    make_store: MakeStore, clock: Any
) -> None:
    store = make_store()
    day = [SpendTotal("acme", "key1", 700), SpendTotal("acme", "key2", 200)]
    month = [SpendTotal("acme", "key1", 5000), SpendTotal("acme", "key2", 200)]
    await store.seed(day, month)
    assert await store.spent("acme", f"t:d:{day_name(clock.now)}") == 900
    assert await store.spent("acme", f"s:key1:m:{month_name(clock.now)}") == 5000
    caller = who(Limits(tokens_per_day=1000), Limits(tokens_per_month=5050))
    admitted(await store.admit(caller, 50))
    rejected(await store.admit(caller, 60), "tokens_per_day")
    # seeding again (a second replica starting) keeps what the store already counts
    await store.seed(day, month)
    assert await store.spent("acme", f"t:d:{day_name(clock.now)}") == 950


async def test_reservation_carries_its_start(make_store: MakeStore, clock: Any) -> None:
    store = make_store(lease_s=60)
    res = admitted(await store.admit(who(Limits()), 5)).reservation
    assert isinstance(res, QuotaReservation)
    assert (res.tenant, res.subject, res.tokens) == ("acme", "key1", 5)
    assert res.expires_at == pytest.approx(clock.now + 60)
    assert res.started_at == pytest.approx(clock.now)


async def test_lease_expiry_on_the_real_clock(make_store: MakeStore) -> None:
    store = make_store(lease_s=0.3, clock=time.time)
    caller = who(Limits(max_concurrent=1), subject="real-clock")
    admitted(await store.admit(caller, 10))  # never settled: its holder "crashed"
    rejected(await store.admit(caller, 10), "concurrency")
    await asyncio.sleep(0.4)
    again = admitted(await store.admit(caller, 10))
    await store.settle(again.reservation, 10)
    assert await store.spent("acme", "s:real-clock:cc") == 0


async def test_the_lease_keeper_keeps_a_long_request_alive(make_store: MakeStore) -> None:
    store = make_store(lease_s=0.3, clock=time.time)
    keeper = LeaseKeeper(store, lease_s=0.3)
    keeper.start()
    try:
        caller = who(Limits(max_concurrent=1), subject="long")
        running = admitted(await store.admit(caller, 10))
        keeper.hold(running.reservation)
        await asyncio.sleep(0.8)  # well past its lease
        rejected(await store.admit(caller, 10), "concurrency")
        keeper.release(running.reservation)
        await store.settle(running.reservation, 5)
        admitted(await store.admit(caller, 10))
    finally:
        await keeper.close()


def test_open_store_by_name() -> None:
    assert open_store("memory").shared is False
    assert open_store("redis", redis_url="redis://127.0.0.1:1/0").shared is True
    with pytest.raises(ValueError, match="needs a redis_url"):
        open_store("redis")
    with pytest.raises(ValueError, match="unknown quota store 'etcd'"):
        open_store("etcd")
