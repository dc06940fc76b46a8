"""Fair sharing through a real gateway (uvicorn on loopback) in front of the fake upstream limited to
a few completions generating at once, called with the official openai client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest

from helpers.fake_openai import FakeUpstream, start_upstream
from helpers.gateway_harness import Running, start_gateway, stop_gateway
from respublica.serving.gateway.contracts import AuthError, Limits, Principal, UsageRecord
from respublica.serving.gateway.fairness.gate import FairnessGate
from respublica.serving.gateway.fairness.vtc import VirtualTokenCounter
from respublica.serving.gateway.quota import MemoryQuotaStore
from respublica.serving.gateway.routing.table import Route, RouteHolder, RouteTable
from respublica.serving.gateway.settings import GatewaySettings

DELAY = 0.05  # seconds between a stream's tokens
TOKENS = 4


class Keys:
    """`Bearer <tenant>` is that tenant, with its limits."""

    def __init__(self, limits: dict[str, Limits]) -> None:
        self.limits = limits

    async def authenticate(self, authorization: str | None) -> Principal:
        tenant = (authorization or "").removeprefix("Bearer ")
        if tenant not in self.limits:
            raise AuthError(401, "invalid_api_key", "unknown")
        return Principal(tenant, f"key-{tenant}", self.limits[tenant])


class NoLedger:
    def record(self, record: UsageRecord) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        pass


@asynccontextmanager
async def gateways(
    limits: dict[str, Limits],
    capacity: int,
    count: int = 1,
    cap_upstream: bool = True,
    slot_wait_s: float | None = None,
    **fairness: Any,
) -> AsyncIterator[tuple[FakeUpstream, list[Running]]]:
    upstream = FakeUpstream(max_generating=capacity if cap_upstream else None)
    runner, url = await start_upstream(upstream)
    settings = GatewaySettings.model_validate(
        {"telemetry": {"metrics": False}, "fairness": {"gateway_replicas": count, **fairness}}
    )
    running: list[Running] = []
    try:
        for _ in range(count):
            route = Route("m", (url,), capacity=capacity, slot_wait_s=slot_wait_s)
            routes = RouteHolder(RouteTable.of([route]))
            running.append(
                await start_gateway(
                    settings,
                    authenticator=Keys(limits),
                    quota_store=MemoryQuotaStore(lease_s=60),
                    ledger=NoLedger(),
                    routes=routes,
                )
            )
        yield upstream, running
    finally:
        for gateway in running:
            await stop_gateway(gateway)
        await runner.cleanup()


def client(gateway: Running, tenant: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=tenant, max_retries=0)


async def stream_one(api: openai.AsyncOpenAI, done: list[str], label: str, tokens: int = TOKENS) -> None:
    stream = await api.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        extra_body={"test_delay": DELAY, "test_tokens": tokens},
    )
    async for _ in stream:
        pass
    done.append(label)


def gate_of(gateway: Running) -> FairnessGate:
    gate = gateway.app.state.gateway.fairness
    assert isinstance(gate, FairnessGate)
    return gate


async def until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_a_light_tenant_goes_before_a_flooding_tenants_backlog() -> None:
    async with gateways({"flood": Limits(), "light": Limits()}, capacity=2) as (upstream, [gateway]):
        done: list[str] = []
        flood = [asyncio.create_task(stream_one(client(gateway, "flood"), done, f"f{i}")) for i in range(10)]
        gate = gate_of(gateway)
        await until(lambda: gate.models.get("m") is not None and gate.models["m"].vtc.waiting == 8)
        await stream_one(client(gateway, "light"), done, "light")
        # Under first come first served it would finish last; here it takes the first free slot.
        assert done.index("light") <= 3, done
        await asyncio.gather(*flood)
        assert upstream.peak_generating <= 2


async def test_a_full_queue_is_429_with_retry_after_and_no_reservation() -> None:
    limits = {"flood": Limits(max_queued=2)}
    async with gateways(limits, capacity=1) as (_, [gateway]):
        done: list[str] = []
        api = client(gateway, "flood")
        tasks = [asyncio.create_task(stream_one(api, done, str(i))) for i in range(3)]  # 1 runs, 2 wait
        gate = gate_of(gateway)
        await until(lambda: gate.models.get("m") is not None and gate.models["m"].vtc.waiting == 2)
        with pytest.raises(openai.RateLimitError) as caught:
            await stream_one(api, done, "refused")
        assert caught.value.code == "queue_full"
        assert int(caught.value.response.headers["retry-after"]) >= 1
        await asyncio.gather(*tasks)
        assert len(done) == 3


async def test_waiting_too_long_is_503_with_retry_after() -> None:
    async with gateways({"t": Limits()}, capacity=1, max_wait_s=0.1) as (_, [gateway]):
        api = client(gateway, "t")
        running = asyncio.create_task(stream_one(api, [], "long"))
        gate = gate_of(gateway)
        await until(lambda: gate.models.get("m") is not None and gate.models["m"].vtc.in_flight == 1)
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                headers={"Authorization": "Bearer t"},
            )
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "capacity_timeout"
        assert answer.headers["retry-after"].isdigit()
        await running
        assert gate.models["m"].vtc.waiting == 0


async def test_a_waking_model_keeps_its_waiting_requests_for_its_wake_budget() -> None:
    """The same wait as above, for a model with no replica ready: its route's `slot_wait_s` (the
    wake budget, fairness/capacity.py deployment_wait_s) outlasts fairness.max_wait_s, so a request
    queued behind the one waking the model is served, not refused."""
    async with gateways({"t": Limits()}, capacity=1, max_wait_s=0.1, slot_wait_s=600) as (_, [gateway]):
        api = client(gateway, "t")
        running = asyncio.create_task(stream_one(api, [], "long"))
        gate = gate_of(gateway)
        await until(lambda: gate.models.get("m") is not None and gate.models["m"].vtc.in_flight == 1)
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
                headers={"Authorization": "Bearer t"},
            )
        assert answer.status_code == 200
        await running
        assert gate.models["m"].vtc.waiting == 0


async def test_a_client_leaving_while_waiting_frees_its_place() -> None:
    async with gateways({"t": Limits()}, capacity=1) as (upstream, [gateway]):
        api = client(gateway, "t")
        running = asyncio.create_task(stream_one(api, [], "long"))
        gate = gate_of(gateway)
        await until(lambda: gate.models.get("m") is not None and gate.models["m"].vtc.in_flight == 1)
        leaving = asyncio.create_task(stream_one(client(gateway, "t"), [], "leaving"))
        await until(lambda: gate.models["m"].vtc.waiting == 1)
        leaving.cancel()  # the client closes its connection
        await until(lambda: gate.models["m"].vtc.waiting == 0)
        await running
        assert len(upstream.seen) == 1  # the one that left never reached the model


async def test_two_gateway_replicas_split_the_capacity() -> None:
    """The chosen way for several replicas: each gates capacity // replicas; the model never sees
    more than its capacity, even when every replica is flooded."""
    async with gateways({"t": Limits()}, capacity=4, count=2, cap_upstream=False) as (upstream, gws):
        assert all(gate_of(g).capacity_of("m", 4) == 2 for g in gws)
        done: list[str] = []
        tasks: Sequence[asyncio.Task[None]] = [
            asyncio.create_task(stream_one(client(g, "t"), done, str(i))) for i in range(8) for g in gws
        ]
        await asyncio.gather(*tasks)
        assert len(done) == 16
        assert upstream.peak_generating <= 4


async def test_a_light_tenants_next_request_takes_the_slot_kept_for_it() -> None:
    """Anticipation, through the real gateway and the openai client: when the light tenant's
    answer ends while the flood waits, its slot is kept (not given to the flood), and its next
    request takes it at once instead of queueing behind the flood."""
    async with gateways({"flood": Limits(), "light": Limits()}, capacity=2, anticipation_ms=1000) as (
        upstream,
        [gateway],
    ):
        light = client(gateway, "light")
        # Twice as long as the flood's requests: the flood still waits when it ends, however slow
        # the machine (6 flood requests of 0.2 s through the other slot).
        first = asyncio.create_task(stream_one(light, [], "light-1", tokens=2 * TOKENS))
        gate = gate_of(gateway)
        await until(lambda: gate.models.get("m") is not None and gate.models["m"].vtc.in_flight == 1)
        vtc = gate.models["m"].vtc
        # The flood has been served far more (a long history); set before it arrives, whose lift
        # only ever raises a counter.
        vtc.counters["flood"] = 10_000.0
        flood = [asyncio.create_task(stream_one(client(gateway, "flood"), [], f"f{i}")) for i in range(6)]
        await until(lambda: vtc.waiting >= 1)
        await first
        await until(lambda: vtc.held == 1)  # the gateway's `finally` may run just after the client's end
        assert list(vtc.holds) == ["light"] and vtc.waiting >= 1
        second = asyncio.create_task(stream_one(light, [], "light-2"))
        await until(lambda: vtc.held == 0)
        assert vtc.running["light"] == 1 and vtc.queued("light") == 0  # dispatched, never queued
        await asyncio.gather(second, *flood)
        assert upstream.peak_generating <= 2


async def light_ends_while_the_flood_waits(
    gateway: Running,
) -> tuple[VirtualTokenCounter, list[asyncio.Task[None]]]:
    """One slot: light's request runs, two of the flood's wait (the flood served far more, a long
    history); returns once light's answer has ended, with the flood's requests still going."""
    first = asyncio.create_task(stream_one(client(gateway, "light"), [], "light"))
    gate = gate_of(gateway)
    await until(lambda: gate.models.get("m") is not None and gate.models["m"].vtc.in_flight == 1)
    vtc = gate.models["m"].vtc
    vtc.counters["flood"] = 10_000.0  # before it arrives: a lift only raises it
    flood = [asyncio.create_task(stream_one(client(gateway, "flood"), [], f"f{i}")) for i in range(2)]
    await until(lambda: vtc.waiting == 2)  # one slot, held by light: they wait until it ends
    await first
    return vtc, flood


async def test_a_slot_kept_for_a_tenant_that_does_not_return_goes_to_the_queue() -> None:
    limits = {"flood": Limits(), "light": Limits()}
    async with gateways(limits, capacity=1, anticipation_ms=1000) as (upstream, [gateway]):
        vtc, flood = await light_ends_while_the_flood_waits(gateway)
        await until(lambda: vtc.held == 1)
        assert vtc.in_flight == 0
        await until(lambda: vtc.held == 0 and vtc.in_flight == 1 and vtc.waiting == 1)  # expired, handed on
        await asyncio.gather(*flood)
        assert len(upstream.seen) == 3


async def test_without_anticipation_a_freed_slot_goes_to_the_queue_at_once() -> None:
    limits = {"flood": Limits(), "light": Limits()}
    async with gateways(limits, capacity=1, anticipation_ms=0) as (_, [gateway]):
        vtc, flood = await light_ends_while_the_flood_waits(gateway)
        await until(lambda: vtc.waiting <= 1)  # handed on at once (the next may even have ended)
        assert vtc.held == 0
        await asyncio.gather(*flood)
