"""The admin API, `/admin/...`: tenants, keys, usage and the audit log, behind its own credential.

A thin edge over `admin_service.AdminService`, which holds every use case (and the CLI calls the
same): a route parses its input, calls the service and formats the result as JSON.

The credential is one admin key from the settings, sent as `Authorization: Bearer <admin key>`
and compared in constant time. Every change is written to the audit log by the service (who,
what, when; never a key) with actor `admin-api@<client address>`. Errors are OpenAI-shaped:
`{"error": {"message", "type", "param", "code"}}`.

Tenants declared in the tenants file are read-only here: the file is their source of truth.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from respublica.serving.gateway.admin_service import (
    AdminFailure,
    AdminService,
    Conflict,
    KeyRequest,
    KeyView,
    NotFound,
    TenantView,
)
from respublica.serving.gateway.auth.api_keys import ApiKeyAuthenticator
from respublica.serving.gateway.auth.bearer import bearer_token
from respublica.serving.gateway.auth.tenants import TenantDirectory
from respublica.serving.gateway.contracts import Limits
from respublica.serving.gateway.db.base import DatabaseError
from respublica.serving.gateway.db.codec import TENANT_NAME_HELP, LimitsModel, format_instant
from respublica.serving.gateway.db.repo import Repository
from respublica.serving.gateway.fairness.gate import FairnessGate
from respublica.serving.gateway.routing.table import Route, RouteHolder
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics, TenantLoad

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    503: "service_unavailable",
}


def _status(failure: AdminFailure) -> int:
    if isinstance(failure, NotFound):
        return 404
    return 409 if isinstance(failure, Conflict) else 400


class AdminError(Exception):
    """A failure of the HTTP edge itself: the admin credential."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.param)


def error_response(status: int, code: str, message: str, param: str | None = None) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status)


class _AdminRoute(APIRoute):
    """Every failure of an admin route, validation included, as an OpenAI-shaped error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except AdminError as exc:
                return exc.response()
            except AdminFailure as exc:
                return error_response(_status(exc), exc.code, exc.message, exc.param)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
                loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
                param = ".".join(loc) or None
                where = f"{param}: " if param else ""
                return error_response(400, "invalid_request", f"{where}{first.get('msg', 'invalid')}", param)
            except DatabaseError:
                return error_response(503, "database_unavailable", "the gateway database is unreachable")

        return run


class TenantCreate(BaseModel):
    """The shape of the body; the service checks the name and the limits' bounds."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description=TENANT_NAME_HELP)
    limits: LimitsModel = Field(default_factory=LimitsModel)


class KeyCreate(BaseModel):
    """The shape of the body (snake_case or camelCase); the service checks the values."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)
    name: str = ""
    expires_at: str | float | None = Field(default=None, description="ISO date/datetime or unix seconds")
    expires_in_days: float | None = None
    limits: LimitsModel | None = None


def _limits_json(limits: Limits) -> dict[str, Any]:
    return LimitsModel.of(limits).model_dump(mode="json", by_alias=True)


def key_json(key: KeyView) -> dict[str, Any]:
    """A key's public view: never its secret or hash."""
    return {
        "id": key.key_id,
        "tenant": key.tenant,
        "name": key.name,
        "state": key.state,
        "limits": _limits_json(key.limits) if key.limits else None,
        "created_at": format_instant(key.created_at),
        "expires_at": format_instant(key.expires_at),
        "revoked_at": format_instant(key.revoked_at),
    }


def tenant_json(tenant: TenantView) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": tenant.name,
        "source": tenant.source,
        "limits": _limits_json(tenant.limits),
    }
    if tenant.source == "database":
        view["created_at"] = format_instant(tenant.created_at)
        view["updated_at"] = format_instant(tenant.updated_at)
    return view


def route_json(route: Route) -> dict[str, Any]:
    """A route as the operator last observed it; null where the source does not say (a routes file
    knows no phase or replicas)."""
    return {
        "name": route.name,
        "phase": route.phase,
        "serving": bool(route.endpoints),
        "endpoints": list(route.endpoints),
        "replicas": {"ready": route.replicas_ready, "desired": route.replicas_desired},
        "context_length": route.max_model_len,
        "capacity": route.capacity,
        "task": route.task,
        "tenants": list(route.tenants),
        "adapters": list(route.adapters),
        "source": route.source,
    }


def load_json(load: TenantLoad | None) -> dict[str, int] | None:
    """A tenant's requests now; null where the gateway keeps no metrics (telemetry.metrics off)."""
    return None if load is None else {"in_flight": load.in_flight, "queued": load.queued}


def admin_router(
    repo: Repository,
    admin_key: str,
    *,
    tenants: TenantDirectory | None = None,
    keys: ApiKeyAuthenticator | None = None,
    fairness: FairnessGate | None = None,
    routes: RouteHolder | None = None,
    metrics: GatewayMetrics | None = None,
) -> APIRouter:
    """`/admin/...` routes; `tenants` and `keys` (this process's) see changes at once; `fairness`
    (this process's queues) for `/admin/fairness`; `routes` for `/admin/models`; `metrics` for the
    tenants' in-flight and queued requests."""
    if len(admin_key) < 16:
        raise ValueError("the admin key must be at least 16 characters long")
    expected = admin_key.encode()
    directory = tenants or TenantDirectory(repo)
    service = AdminService(
        repo,
        declared=directory.declared,
        forget_tenant=directory.forget,
        forget_key=keys.forget if keys is not None else lambda _: None,
    )

    def actor(request: Request) -> str:
        host = request.client.host if request.client else "unknown"
        if not hmac.compare_digest(_bearer(request).encode(), expected):
            raise AdminError(401, "invalid_admin_key", "incorrect admin key")
        return f"admin-api@{host}"

    def _bearer(request: Request) -> str:
        credential = bearer_token(request.headers.get("authorization"))
        if credential is None:
            raise AdminError(
                401, "missing_admin_key", "send the admin key as 'Authorization: Bearer <admin key>'"
            )
        return credential

    router = APIRouter(prefix="/admin", route_class=_AdminRoute, tags=["admin"])

    @router.get("/tenants")
    async def list_tenants(who: str = Depends(actor)) -> dict[str, Any]:
        """The tenants, each with its requests now (`load`: in flight and queued, every worker)."""
        loads = metrics.load_by_tenant() if metrics is not None else None
        idle = TenantLoad(0, 0)
        return {
            "object": "list",
            "data": [
                {**tenant_json(t), "load": load_json(loads.get(t.name, idle) if loads is not None else None)}
                for t in await service.list_tenants()
            ],
        }

    @router.get("/models")
    async def list_models(who: str = Depends(actor)) -> dict[str, Any]:
        """The route table now: each model's phase, replicas and context length, as the console shows."""
        table = routes.table if routes is not None else None
        return {
            "object": "list",
            "ready": routes.ready if routes is not None else False,
            "data": [route_json(table.routes[name]) for name in sorted(table.routes)] if table else [],
        }

    @router.post("/tenants", status_code=201)
    async def create_tenant(body: TenantCreate, who: str = Depends(actor)) -> dict[str, Any]:
        return tenant_json(await service.create_tenant(who, body.name, body.limits.to_limits()))

    @router.get("/tenants/{name}")
    async def get_tenant(name: str, who: str = Depends(actor)) -> dict[str, Any]:
        return tenant_json(await service.get_tenant(name))

    @router.put("/tenants/{name}/limits")
    async def set_limits(name: str, body: LimitsModel, who: str = Depends(actor)) -> dict[str, Any]:
        return tenant_json(await service.set_limits(who, name, body.to_limits()))

    @router.delete("/tenants/{name}")
    async def delete_tenant(name: str, who: str = Depends(actor)) -> dict[str, Any]:
        deleted = await service.delete_tenant(who, name)
        return {"name": deleted.name, "deleted": True, "revoked_keys": list(deleted.revoked_keys)}

    @router.post("/tenants/{name}/keys", status_code=201)
    async def create_key(name: str, body: KeyCreate, who: str = Depends(actor)) -> dict[str, Any]:
        request = KeyRequest(
            tenant=name,
            name=body.name,
            expires_at=body.expires_at,
            expires_in_days=body.expires_in_days,
            limits=body.limits.to_limits() if body.limits is not None else None,
        )
        created = await service.create_key(who, request)
        return {
            **key_json(created.view),
            "key": created.key,
            "note": "store this key now: it is not shown again",
        }

    @router.get("/keys")
    async def list_keys(
        tenant: str | None = Query(default=None), who: str = Depends(actor)
    ) -> dict[str, Any]:
        return {"object": "list", "data": [key_json(k) for k in await service.list_keys(tenant)]}

    @router.delete("/keys/{key_id}")
    async def revoke_key(key_id: str, who: str = Depends(actor)) -> dict[str, Any]:
        await service.revoke_key(who, key_id)
        return {"id": key_id, "revoked": True}

    @router.get("/usage")
    async def usage(
        since: str = Query(description="2026-11-01, an ISO datetime or unix seconds"),
        until: str | None = Query(default=None),
        tenant: str | None = Query(default=None),
        who: str = Depends(actor),
    ) -> dict[str, Any]:
        totals = await service.usage(since, until=until, tenant=tenant)
        return {
            "object": "list",
            "data": [
                {
                    "tenant": t.tenant,
                    "model": t.model,
                    "day": t.day,
                    "requests": t.requests,
                    "errors": t.errors,
                    "input_tokens": t.input_tokens,
                    "output_tokens": t.output_tokens,
                }
                for t in totals
            ],
        }

    @router.get("/fairness")
    async def fairness_view(who: str = Depends(actor)) -> dict[str, Any]:
        """This process's fair-sharing queues: per model its slots, per tenant service and waiting."""
        if fairness is None:
            return {"enabled": False, "models": []}
        return fairness.snapshot()

    @router.get("/audit")
    async def audit(since: str = Query(default="0"), who: str = Depends(actor)) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "at": format_instant(e.at),
                    "actor": e.actor,
                    "action": e.action,
                    "target": e.target,
                    "detail": e.detail,
                }
                for e in await service.audit_log(since)
            ],
        }

    return router
