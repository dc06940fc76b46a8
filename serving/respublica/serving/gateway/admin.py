"""The admin API, `/admin/...`: tenants, keys, usage and the audit log, behind its own credential.

The credential is one admin key from the settings, sent as `Authorization: Bearer <admin key>`
and compared in constant time. Every change is written to the audit log (who, what, when; never
a key). Errors are OpenAI-shaped: `{"error": {"message", "type", "param", "code"}}`.

Tenants declared in the tenants file are read-only here: the file is their source of truth.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator

from respublica.serving.gateway.auth.api_keys import ApiKeyAuthenticator
from respublica.serving.gateway.auth.keys import generate_key
from respublica.serving.gateway.auth.tenants import TenantDirectory
from respublica.serving.gateway.contracts import Limits
from respublica.serving.gateway.db.base import DatabaseError
from respublica.serving.gateway.db.codec import (
    TENANT_NAME_HELP,
    LimitsModel,
    check_tenant_name,
    format_instant,
    parse_instant,
)
from respublica.serving.gateway.db.repo import KeyRow, Repository

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    503: "service_unavailable",
}


class AdminError(Exception):
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
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description=TENANT_NAME_HELP)
    limits: LimitsModel = Field(default_factory=LimitsModel)

    @field_validator("name")
    @classmethod
    def _tenant_name(cls, name: str) -> str:
        return check_tenant_name(name)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=200)
    expires_at: str | None = Field(default=None, description="ISO date/datetime or unix seconds")
    expires_in_days: float | None = Field(default=None, gt=0)
    limits: LimitsModel | None = None


def _limits_json(limits: Limits) -> dict[str, Any]:
    return LimitsModel.of(limits).model_dump(mode="json", by_alias=True)


def key_json(row: KeyRow) -> dict[str, Any]:
    """A key's public view: never its secret or hash."""
    return {
        "id": row.key_id,
        "tenant": row.tenant,
        "name": row.name,
        "limits": _limits_json(row.limits) if row.limits else None,
        "created_at": format_instant(row.created_at),
        "expires_at": format_instant(row.expires_at),
        "revoked_at": format_instant(row.revoked_at),
    }


def admin_router(
    repo: Repository,
    admin_key: str,
    *,
    tenants: TenantDirectory | None = None,
    keys: ApiKeyAuthenticator | None = None,
) -> APIRouter:
    """`/admin/...` routes; `tenants` and `keys` (this process's) see changes at once."""
    if len(admin_key) < 16:
        raise ValueError("the admin key must be at least 16 characters long")
    expected = admin_key.encode()
    directory = tenants or TenantDirectory(repo)

    def actor(request: Request) -> str:
        host = request.client.host if request.client else "unknown"
        if not hmac.compare_digest(_bearer(request).encode(), expected):
            raise AdminError(401, "invalid_admin_key", "incorrect admin key")
        return f"admin-api@{host}"

    def _bearer(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise AdminError(
                401, "missing_admin_key", "send the admin key as 'Authorization: Bearer <admin key>'"
            )
        return credential.strip()

    router = APIRouter(prefix="/admin", route_class=_AdminRoute, tags=["admin"])

    async def _tenant_view(name: str) -> dict[str, Any] | None:
        if directory.is_declared(name):
            return {"name": name, "source": "file", "limits": _limits_json(directory.declared[name])}
        row = await repo.get_tenant(name)
        if row is None:
            return None
        return {
            "name": name,
            "source": "database",
            "limits": _limits_json(row.limits),
            "created_at": format_instant(row.created_at),
            "updated_at": format_instant(row.updated_at),
        }

    def _not_in_file(name: str, what: str) -> None:
        if directory.is_declared(name):
            raise AdminError(
                409,
                "tenant_declared_in_file",
                f"tenant '{name}' is declared in the tenants file: {what} it there",
            )

    @router.get("/tenants")
    async def list_tenants(who: str = Depends(actor)) -> dict[str, Any]:
        names = sorted(set(directory.declared) | {t.name for t in await repo.list_tenants()})
        return {"object": "list", "data": [await _tenant_view(n) for n in names]}

    @router.post("/tenants", status_code=201)
    async def create_tenant(body: TenantCreate, who: str = Depends(actor)) -> dict[str, Any]:
        _not_in_file(body.name, "change")
        if not await repo.create_tenant(body.name, body.limits.to_limits()):
            raise AdminError(409, "tenant_exists", f"tenant '{body.name}' exists already", "name")
        await repo.audit(who, "tenant.create", body.name, {"limits": _limits_json(body.limits.to_limits())})
        directory.forget(body.name)
        return await _tenant_view(body.name) or {}

    @router.get("/tenants/{name}")
    async def get_tenant(name: str, who: str = Depends(actor)) -> dict[str, Any]:
        view = await _tenant_view(name)
        if view is None:
            raise AdminError(404, "tenant_not_found", f"tenant '{name}' does not exist")
        return view

    @router.put("/tenants/{name}/limits")
    async def set_limits(name: str, body: LimitsModel, who: str = Depends(actor)) -> dict[str, Any]:
        _not_in_file(name, "change its limits")
        if not await repo.set_tenant_limits(name, body.to_limits()):
            raise AdminError(404, "tenant_not_found", f"tenant '{name}' does not exist")
        await repo.audit(who, "tenant.set_limits", name, {"limits": _limits_json(body.to_limits())})
        directory.forget(name)
        return await _tenant_view(name) or {}

    @router.delete("/tenants/{name}")
    async def delete_tenant(name: str, who: str = Depends(actor)) -> dict[str, Any]:
        _not_in_file(name, "remove")
        owned = [k.key_id for k in await repo.list_keys(name) if k.revoked_at is None]
        if not await repo.delete_tenant(name):
            raise AdminError(404, "tenant_not_found", f"tenant '{name}' does not exist")
        await repo.audit(who, "tenant.delete", name, {"revoked_keys": owned})
        directory.forget(name)
        for key_id in owned:
            if keys is not None:
                keys.forget(key_id)
        return {"name": name, "deleted": True, "revoked_keys": owned}

    @router.post("/tenants/{name}/keys", status_code=201)
    async def create_key(name: str, body: KeyCreate, who: str = Depends(actor)) -> dict[str, Any]:
        if await directory.limits(name) is None:
            raise AdminError(404, "tenant_not_found", f"tenant '{name}' does not exist")
        if body.expires_at is not None and body.expires_in_days is not None:
            raise AdminError(
                400, "invalid_request", "give expires_at or expires_in_days, not both", "expires_at"
            )
        expires: float | None = None
        if body.expires_at is not None:
            try:
                expires = parse_instant(body.expires_at)
            except ValueError as exc:
                raise AdminError(400, "invalid_request", str(exc), "expires_at") from None
        elif body.expires_in_days is not None:
            expires = time.time() + body.expires_in_days * 86400
        new = generate_key()
        limits = body.limits.to_limits() if body.limits else None
        row = await repo.create_key(
            new.key_id, name, new.secret_hash, name=body.name, limits=limits, expires_at=expires
        )
        await repo.audit(
            who,
            "key.create",
            new.key_id,
            {"tenant": name, "name": body.name, "expires_at": format_instant(expires)},
        )
        return {**key_json(row), "key": new.key, "note": "store this key now: it is not shown again"}

    @router.get("/keys")
    async def list_keys(
        tenant: str | None = Query(default=None), who: str = Depends(actor)
    ) -> dict[str, Any]:
        return {"object": "list", "data": [key_json(k) for k in await repo.list_keys(tenant)]}

    @router.delete("/keys/{key_id}")
    async def revoke_key(key_id: str, who: str = Depends(actor)) -> dict[str, Any]:
        row = await repo.get_key(key_id)
        if row is None:
            raise AdminError(404, "key_not_found", f"API key '{key_id}' does not exist")
        if not await repo.revoke_key(key_id):
            raise AdminError(409, "key_revoked", f"API key '{key_id}' was revoked already")
        await repo.audit(who, "key.revoke", key_id, {"tenant": row.tenant})
        if keys is not None:
            keys.forget(key_id)
        return {"id": key_id, "revoked": True}

    @router.get("/usage")
    async def usage(
        since: str = Query(description="2026-11-01, an ISO datetime or unix seconds"),
        until: str | None = Query(default=None),
        tenant: str | None = Query(default=None),
        who: str = Depends(actor),
    ) -> dict[str, Any]:
        try:
            start = parse_instant(since)
            end = parse_instant(until) if until else None
        except ValueError as exc:
            raise AdminError(400, "invalid_request", str(exc), "since") from None
        totals = await repo.usage_totals(start, tenant=tenant, until=end)
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

    @router.get("/audit")
    async def audit(since: str = Query(default="0"), who: str = Depends(actor)) -> dict[str, Any]:
        try:
            start = parse_instant(since)
        except ValueError as exc:
            raise AdminError(400, "invalid_request", str(exc), "since") from None
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
                for e in await repo.audit_log(start)
            ],
        }

    return router
