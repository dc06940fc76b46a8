"""Runs a gateway (real uvicorn) and the fake upstream on loopback in a background event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvicorn
from aiohttp import web
from fake_openai import FakeUpstream, start_upstream
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from respublica.serving.gateway.app import create_app
from respublica.serving.gateway.contracts import (
    Admission,
    Authenticator,
    AuthError,
    Ledger,
    Limits,
    Principal,
    QuotaStore,
    Rejection,
    Reservation,
    UsageRecord,
)
from respublica.serving.gateway.routing.table import Route, RouteHolder, RouteTable
from respublica.serving.gateway.settings import GatewaySettings

T = TypeVar("T")


class LoopThread:
    """An event loop in a daemon thread; `run` waits (bounded) for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="gateway-loop")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class ListLedger:
    """Keeps records in a list (the real ledger is the policy side's, tested there)."""

    records: list[UsageRecord] = field(default_factory=list)
    closed: bool = False

    def record(self, record: UsageRecord) -> None:
        self.records.append(record)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


@dataclass
class Running:
    url: str
    app: FastAPI
    server: uvicorn.Server
    task: asyncio.Future[None]
    exporter: InMemorySpanExporter
    routes: RouteHolder


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def start_gateway(
    settings: GatewaySettings,
    *,
    authenticator: Authenticator,
    quota_store: QuotaStore,
    ledger: Ledger,
    routes: RouteHolder,
) -> Running:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(
        settings,
        authenticator=authenticator,
        quota_store=quota_store,
        ledger=ledger,
        route_table=routes,
        tracer_provider=provider,
    )
    sock = free_socket()
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    assert server.started, "gateway did not start"
    port = sock.getsockname()[1]
    return Running(f"http://127.0.0.1:{port}", app, server, task, exporter, routes)


async def stop_gateway(running: Running) -> None:
    running.server.should_exit = True
    await asyncio.wait_for(running.task, 15)


async def start_fake_upstream() -> tuple[FakeUpstream, web.AppRunner, str]:
    upstream = FakeUpstream()
    runner, url = await start_upstream(upstream)
    return upstream, runner, url


ALPHA_KEY = "rp-alpha-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
BETA_KEY = "rp-beta-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
GAMMA_KEY = "rp-gamma-77aa66bb55cc44dd33ee22ff11009988"
ALPHA_DEFAULT_CAP = 50


class KeyAuthenticator:
    """Keys in a dict. Stands in for the policy side's authenticator in these HTTP-side tests."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self.principals = principals

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError(401, "missing_api_key", "no API key: send 'Authorization: Bearer <key>'")
        principal = self.principals.get(authorization.removeprefix("Bearer "))
        if principal is None:
            raise AuthError(401, "invalid_api_key", "the API key is not valid")
        return principal


PRINCIPALS = {
    ALPHA_KEY: Principal("alpha", "key-alpha", Limits(default_max_tokens=ALPHA_DEFAULT_CAP)),
    BETA_KEY: Principal("beta", "key-beta", Limits(allowed_models=("m-private",))),
    GAMMA_KEY: Principal("gamma", "key-gamma", Limits()),
}


class BudgetQuota:
    """A token budget per tenant with reservations. Stands in for the policy side's store."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self.spent = 0
        self.held: dict[str, int] = {}
        self.settled: list[tuple[str, int]] = []
        self.reserved: dict[str, int] = {}

    async def admit(self, principal: Principal, tokens: int) -> Admission | Rejection:
        if self.budget is not None and self.spent + sum(self.held.values()) + tokens > self.budget:
            return Rejection("tokens_per_day", "daily token budget is spent", 30.0)
        rid = f"r{len(self.held) + len(self.settled)}"
        self.held[rid] = self.reserved[rid] = tokens
        return Admission(Reservation(rid, principal.tenant, principal.subject, tokens, 0.0))

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        if self.held.pop(reservation.id, None) is not None:
            self.spent += used_tokens
            self.settled.append((reservation.id, used_tokens))

    async def close(self) -> None:
        return None


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def default_routes(upstream_url: str) -> RouteTable:
    dead = closed_port_url()
    return RouteTable.of(
        [
            Route("m", (upstream_url,), adapters=("sql",)),
            Route("m-private", (upstream_url,), tenants=("beta",)),
            Route("m-refused", (dead,)),
            Route("m-failover", (dead, upstream_url)),
            Route("m-waking", ()),
        ]
    )


@dataclass
class Stack:
    gateway: Running
    upstream: FakeUpstream
    upstream_url: str
    ledger: ListLedger
    quota: Any

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def base_url(self) -> str:
        return self.gateway.url + "/v1"


def eventually(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait (bounded) for what the gateway does after the client has its last byte (a stream's end)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
