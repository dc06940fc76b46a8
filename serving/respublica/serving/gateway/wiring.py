"""`build_from_settings`: the gateway with the real policy parts (database, auth, quota store,
ledger) and the route source the settings name. Everything that needs the event loop (opening
the database, seeding spend from the ledger, the Kubernetes watch) happens at startup.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from respublica.serving.gateway.app import Hook, create_app
from respublica.serving.gateway.db.base import Database, Dialect, open_database
from respublica.serving.gateway.routing.table import RouteHolder
from respublica.serving.gateway.settings import GatewaySettings, load_settings

CONFIG_ENV = "RESPUBLICA_GATEWAY_CONFIG"  # the config file, for worker processes started by uvicorn


class LateDatabase:
    """A `Database` opened at startup (inside the server's event loop), usable by parts built before."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect: Dialect = "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"
        self._db: Database | None = None

    async def open(self) -> None:
        if self._db is None:
            self._db = await open_database(self.url)

    def _open(self) -> Database:
        if self._db is None:
            raise RuntimeError("the database is not open yet")
        return self._db

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return await self._open().execute(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._open().executemany(sql, rows)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return await self._open().fetch(sql, args)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None


def build_from_settings(settings: GatewaySettings) -> FastAPI:
    """The gateway as configured, with the real implementations of the policy side."""
    from respublica.serving.gateway.admin_service import AdminService
    from respublica.serving.gateway.auth import (
        ApiKeyAuthenticator,
        GatewayAuthenticator,
        OidcAuthenticator,
        TenantDirectory,
    )
    from respublica.serving.gateway.db.repo import Repository
    from respublica.serving.gateway.journal import UsageJournal
    from respublica.serving.gateway.ledger import SqlLedger
    from respublica.serving.gateway.quota import open_store, rebuild_from_ledger, seed_from_ledger
    from respublica.serving.gateway.routes.asgi import configure_body_budget
    from respublica.serving.gateway.routing.file_source import load_routes_file
    from respublica.serving.gateway.tenants_file import load_tenants_file

    configure_body_budget(settings.body_bytes_in_flight)  # per process, as the memory it bounds
    db = LateDatabase(settings.database_url)
    repo = Repository(db)
    declared = load_tenants_file(settings.tenants_file) if settings.tenants_file else {}
    tenants = TenantDirectory(repo, declared)
    oidc = None
    if settings.oidc.enabled:
        oidc = OidcAuthenticator(
            tenants,
            jwks_file=settings.oidc.jwks_file,
            jwks_url=settings.oidc.jwks_url,
            audience=settings.oidc.audience,
            issuer=settings.oidc.issuer,
            tenant_claim=settings.oidc.tenant_claim,
            algorithms=settings.oidc.algorithms,
        )
    keys = ApiKeyAuthenticator(repo, tenants)
    authenticator = GatewayAuthenticator(keys, oidc)
    quota = open_store(
        settings.quota.store,
        redis_url=settings.quota.redis_url,
        lease_s=settings.quota.lease_seconds,
        fail_policy=settings.quota.fail_policy,
    )
    ledger = SqlLedger(repo, journal=UsageJournal(journal_dir(settings)))
    rebuild_from_ledger(quota, repo, ledger.flush)  # a Redis that lost its data is rebuilt, not trusted

    from respublica.serving.gateway.fairness.gate import FairnessGate

    fair = settings.fairness
    fairness = FairnessGate(fair, fair.gateway_replicas * settings.workers) if fair.enabled else None
    holder = RouteHolder()
    startup: list[Hook] = [db.open, ledger.open]  # a dead process's records in, before spend is seeded
    shutdown: list[Hook] = []
    if settings.routes_file is not None:
        holder.replace(load_routes_file(settings.routes_file))
    elif settings.cluster.enabled:
        holder.ready = False  # until the first listing of ModelDeployments
        from respublica.serving.gateway.routing.k8s_source import (
            KubeAccess,
            KubernetesRouteSource,
            in_cluster_access,
            kubeconfig_access,
        )

        cluster = settings.cluster
        access = kubeconfig_access(cluster.kubeconfig) if cluster.kubeconfig else in_cluster_access()
        if cluster.api_server:
            access = KubeAccess(cluster.api_server, access.token, access.token_file, access.ssl_context)
        source = KubernetesRouteSource(holder, access, cluster.namespace)
        startup.append(source.start)
        shutdown.append(source.stop)

    async def seed() -> None:
        await seed_from_ledger(quota, repo)

    startup.append(seed)
    service = AdminService(
        repo, declared=tenants.declared, forget_tenant=tenants.forget, forget_key=keys.forget
    )
    metrics = None
    if settings.telemetry.metrics:
        from respublica.serving.gateway.telemetry.budget import BudgetSampler
        from respublica.serving.gateway.telemetry.health import HealthSampler
        from respublica.serving.gateway.telemetry.metrics import GatewayMetrics

        metrics = GatewayMetrics()
        sampler = HealthSampler(metrics, ledger, quota)
        budgets = BudgetSampler(metrics, service.spend)

        async def start_sampler() -> None:
            sampler.start()

        startup.extend((start_sampler, budgets.start))
        shutdown.extend((sampler.stop, budgets.stop))
    routers = []
    if settings.admin_key is not None:
        from respublica.serving.gateway.admin import admin_router

        routers.append(
            admin_router(
                repo,
                settings.admin_key.get_secret_value(),
                tenants=tenants,
                keys=keys,
                fairness=fairness,
                routes=holder,
                metrics=metrics,
            )
        )
        if settings.console.enabled:
            from respublica.serving.gateway.console import console_router

            routers.append(
                console_router(
                    service,
                    holder,
                    settings.admin_key.get_secret_value(),
                    secure_cookie=settings.console.secure_cookie,
                    session_ttl_s=settings.console.session_hours * 3600,
                    oidc=oidc,
                    oidc_admin_claim=settings.console.oidc_admin_claim,
                    oidc_admin_role=settings.console.oidc_admin_role,
                    metrics=metrics,
                )
            )
    app = create_app(
        settings,
        metrics=metrics,
        authenticator=authenticator,
        quota_store=quota,
        ledger=ledger,
        route_table=holder,
        fairness=fairness,
        routers=routers,
        on_startup=startup,
        on_shutdown=shutdown,
        after_shutdown=[db.close],
    )
    return app


def journal_dir(settings: GatewaySettings) -> Path:
    """The usage journal's directory: the setting, else beside a SQLite file, else the state home."""
    if settings.journal_dir is not None:
        return settings.journal_dir
    url = settings.database_url
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///") + ".journal")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "respublica" / "journal"


def app_from_environment() -> FastAPI:
    """uvicorn's factory in each worker process: settings from the config file and the environment."""
    config = os.environ.get(CONFIG_ENV)
    return build_from_settings(load_settings(Path(config) if config else None))
