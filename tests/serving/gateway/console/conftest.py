"""Fixtures of the console tests: the console router over a real SQLite database, through httpx."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from helpers.clock import Clock
from respublica.serving.gateway.admin_service import AdminService
from respublica.serving.gateway.console import console_router
from respublica.serving.gateway.contracts import Limits
from respublica.serving.gateway.db import Repository, open_database
from respublica.serving.gateway.routing.table import Route, RouteHolder, RouteTable
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics

ADMIN = "admin-key-0123456789abcdef"
BASE = "http://gateway.test"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')


@dataclass
class Console:
    client: httpx.AsyncClient
    repo: Repository
    clock: Clock
    routes: RouteHolder
    metrics: GatewayMetrics

    async def login(self) -> str:
        """Logs in through the form; the session's CSRF token, as the pages carry it."""
        page = await self.client.get("/console/login")
        token = _LOGIN_CSRF.search(page.text)
        assert token is not None
        done = await self.client.post(
            "/console/login", data={"admin_key": ADMIN, "login_csrf": token.group(1)}
        )
        assert done.status_code == 303, done.text
        return await self.csrf()

    async def csrf(self) -> str:
        page = await self.client.get("/console/tenants")
        found = _CSRF.search(page.text)
        assert found is not None, page.text
        return found.group(1)


@pytest.fixture
async def console(tmp_path: Path, clock: Clock) -> AsyncIterator[Console]:
    db = await open_database(f"sqlite:///{tmp_path}/console.db")
    repo = Repository(db)
    service = AdminService(repo, declared={"gitops": Limits(tokens_per_day=500)}, clock=clock)
    routes = RouteHolder(
        RouteTable.of(
            [
                Route(
                    "llama",
                    ("http://10.0.0.7:8000",),
                    source="ModelDeployment ai/llama (Degraded)",
                    max_model_len=8192,
                    phase="Degraded",
                    replicas_ready=1,
                    replicas_desired=2,
                ),
                Route("private", (), tenants=("gitops",)),
            ]
        )
    )
    metrics = GatewayMetrics(CollectorRegistry())
    app = FastAPI()
    app.include_router(console_router(service, routes, ADMIN, clock=clock, metrics=metrics))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield Console(client, repo, clock, routes, metrics)
    await db.close()
