"""Runs a gateway (real uvicorn) and the fake upstream on loopback in a background event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from aiohttp import web
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from helpers.fake_openai import FakeUpstream, start_upstream
from respublica.serving.gateway.app import Hook, create_app
from respublica.serving.gateway.auth import ApiKeyAuthenticator, GatewayAuthenticator, TenantDirectory
from respublica.serving.gateway.auth.keys import hash_secret
from respublica.serving.gateway.contracts import (
    Admission,
    Authenticator,
    Ledger,
    Limits,
    Principal,
    QuotaStore,
    Rejection,
    Reservation,
    UsageRecord,
)
from respublica.serving.gateway.db import Database, Repository, open_database
from respublica.serving.gateway.ledger import SqlLedger
from respublica.serving.gateway.quota import MemoryQuotaStore
from respublica.serving.gateway.routing.table import Route, RouteHolder, RouteTable
from respublica.serving.gateway.settings import GatewaySettings
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics

T = TypeVar("T")


class LoopThread:
    """An event loop in a daemon thread; `run` waits (bounded) for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="gateway-loop")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def arun(self, coro: Coroutine[Any, Any, T], within_s: float = 30.0) -> T:
        """`run` for async tests: the caller's own loop keeps serving (e.g. kmock) while it waits."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), within_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Running:
    url: str
    app: FastAPI
    server: uvicorn.Server
    task: asyncio.Future[None]
    exporter: InMemorySpanExporter
    routes: RouteHolder


def free_socket() -> socket.socket:
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a streamed event waits ~40 ms for the client's delayed ACK (Nagle). uvicorn's own
    # listeners run on uvloop, which always sets it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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
    metrics: GatewayMetrics | None = None,
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
) -> Running:
    """`metrics` and the hooks: for parts the real wiring (wiring.py) adds, e.g. a sampler."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(
        settings,
        authenticator=authenticator,
        quota_store=quota_store,
        ledger=ledger,
        route_table=routes,
        # With an OTLP endpoint configured the app builds its own exporting provider.
        tracer_provider=None if settings.telemetry.otlp_endpoint else provider,
        metrics=metrics,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
    return await serve_app(app, exporter, routes)


async def serve_app(app: FastAPI, exporter: InMemorySpanExporter, routes: RouteHolder) -> Running:
    sock = free_socket()
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    for _ in range(1000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    assert server.started, "gateway did not start"
    port = sock.getsockname()[1]
    return Running(f"http://127.0.0.1:{port}", app, server, task, exporter, routes)


async def stop_gateway(running: Running) -> None:
    if running.task.done():
        return
    running.server.should_exit = True
    await asyncio.wait_for(running.task, 15)


async def start_fake_upstream() -> tuple[FakeUpstream, web.AppRunner, str]:
    upstream = FakeUpstream()
    runner, url = await start_upstream(upstream)
    return upstream, runner, url


def _key(key_id: str, filler: str) -> tuple[str, str, str]:
    """A fixed key of the policy side's format: (key id, secret, the key as a client sends it)."""
    secret = (filler * 43)[:43]
    return key_id, secret, f"rp_{key_id}_{secret}"


ALPHA_KEY_ID, _ALPHA_SECRET, ALPHA_KEY = _key("a1a1a1a1a1a1a1a1", "Alpha7")
BETA_KEY_ID, _BETA_SECRET, BETA_KEY = _key("b2b2b2b2b2b2b2b2", "Beta9x")
GAMMA_KEY_ID, _GAMMA_SECRET, GAMMA_KEY = _key("c3c3c3c3c3c3c3c3", "Gamma3")
TIGHT_KEY_ID, _TIGHT_SECRET, TIGHT_KEY = _key("d4d4d4d4d4d4d4d4", "Tight5")
ALPHA_DEFAULT_CAP = 50
TIGHT_BUDGET = 40

# Tenants as the tenants file declares them; keys in the database, as `respublica keys create` makes them.
TENANTS = {
    "alpha": Limits(default_max_tokens=ALPHA_DEFAULT_CAP),
    "beta": Limits(allowed_models=("m-private",)),
    "gamma": Limits(),
    "tight": Limits(tokens_per_minute=TIGHT_BUDGET, requests_per_minute=100),
}
KEYS = [
    ("alpha", ALPHA_KEY_ID, _ALPHA_SECRET),
    ("beta", BETA_KEY_ID, _BETA_SECRET),
    ("gamma", GAMMA_KEY_ID, _GAMMA_SECRET),
    ("tight", TIGHT_KEY_ID, _TIGHT_SECRET),
]


@dataclass
class Policy:
    """The policy side's real parts over a SQLite file, with what the tests observe."""

    authenticator: GatewayAuthenticator
    quota: RecordingQuota
    ledger: RecordingLedger
    db: Database


async def real_policy(db_path: Path, quota: QuotaStore | None = None) -> Policy:
    db = await open_database(f"sqlite:///{db_path}")
    repo = Repository(db)
    for tenant, key_id, secret in KEYS:
        await repo.create_key(key_id, tenant, hash_secret(key_id, secret), name="test")
    directory = TenantDirectory(repo, TENANTS)
    authenticator = GatewayAuthenticator(ApiKeyAuthenticator(repo, directory))
    store = RecordingQuota(quota if quota is not None else MemoryQuotaStore(lease_s=60))
    ledger = RecordingLedger(SqlLedger(repo, interval_s=0.05))
    return Policy(authenticator, store, ledger, db)


class RecordingQuota:
    """Passes every call to the real store and notes what it was asked: reservations and settlements."""

    def __init__(self, inner: QuotaStore) -> None:
        self.inner = inner
        self.reserved: dict[str, int] = {}
        self.settled: list[tuple[str, int]] = []
        self.extended: list[str] = []

    @property
    def held(self) -> set[str]:
        return set(self.reserved) - {rid for rid, _ in self.settled}

    async def admit(self, principal: Principal, tokens: int) -> Admission | Rejection:
        decision = await self.inner.admit(principal, tokens)
        if isinstance(decision, Admission):
            self.reserved[decision.reservation.id] = tokens
        return decision

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        # The QuotaStore contract: a settlement completes even if its caller is cancelled, and so
        # does its record here.
        await asyncio.shield(self._settle(reservation, used_tokens))

    async def _settle(self, reservation: Reservation, used_tokens: int) -> None:
        await self.inner.settle(reservation, used_tokens)
        self.settled.append((reservation.id, used_tokens))

    async def extend(self, reservations: Sequence[Reservation]) -> None:
        await self.inner.extend(reservations)
        self.extended.extend(r.id for r in reservations)

    async def close(self) -> None:
        await self.inner.close()


class RecordingLedger:
    """The real ledger, with the records also kept in a list for assertions."""

    def __init__(self, inner: SqlLedger) -> None:
        self.inner = inner
        self.records: list[UsageRecord] = []

    def record(self, record: UsageRecord) -> None:
        self.records.append(record)
        self.inner.record(record)

    async def flush(self) -> None:
        await self.inner.flush()

    async def close(self) -> None:
        await self.inner.close()


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
    ledger: RecordingLedger
    quota: RecordingQuota
    db: Database

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
