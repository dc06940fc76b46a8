"""Every query the gateway, the admin API and the CLI make, on either dialect."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from respublica.serving.gateway.contracts import Limits, UsageRecord
from respublica.serving.gateway.db.base import Database, Row
from respublica.serving.gateway.db.codec import limits_from_json, limits_to_json


@dataclass(frozen=True)
class TenantRow:
    name: str
    limits: Limits
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class KeyRow:
    key_id: str
    tenant: str
    secret_hash: str
    name: str
    limits: Limits | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None


@dataclass(frozen=True)
class UsageTotal:
    tenant: str
    model: str
    day: str  # YYYY-MM-DD, UTC
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class SpendTotal:
    tenant: str
    subject: str
    tokens: int


@dataclass(frozen=True)
class ModelActivity:
    model: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class AuditEntry:
    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _tenant(row: Row) -> TenantRow:
    return TenantRow(
        name=row["name"],
        limits=limits_from_json(row["limits"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def _key(row: Row) -> KeyRow:
    return KeyRow(
        key_id=row["key_id"],
        tenant=row["tenant"],
        secret_hash=row["secret_hash"],
        name=row["name"],
        limits=limits_from_json(row["limits"]) if row["limits"] else None,
        created_at=float(row["created_at"]),
        expires_at=None if row["expires_at"] is None else float(row["expires_at"]),
        revoked_at=None if row["revoked_at"] is None else float(row["revoked_at"]),
    )


_USAGE_INSERT = (
    "INSERT INTO usage (request_id, started_at, day, tenant, subject, model, endpoint, input_tokens, "
    "output_tokens, latency_ms, ttft_ms, status, error_type, stream, charge) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING"
)


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- tenants --------------------------------------------------------------------------------
    async def create_tenant(self, name: str, limits: Limits, *, now: float | None = None) -> bool:
        """False when the tenant exists already."""
        now = time.time() if now is None else now
        changed = await self.db.execute(
            "INSERT INTO tenants (name, limits, created_at, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING",
            (name, limits_to_json(limits), now, now),
        )
        return changed > 0

    async def get_tenant(self, name: str) -> TenantRow | None:
        rows = await self.db.fetch("SELECT * FROM tenants WHERE name = ?", (name,))
        return _tenant(rows[0]) if rows else None

    async def list_tenants(self) -> list[TenantRow]:
        return [_tenant(r) for r in await self.db.fetch("SELECT * FROM tenants ORDER BY name")]

    async def set_tenant_limits(self, name: str, limits: Limits) -> bool:
        changed = await self.db.execute(
            "UPDATE tenants SET limits = ?, updated_at = ? WHERE name = ?",
            (limits_to_json(limits), time.time(), name),
        )
        return changed > 0

    async def delete_tenant(self, name: str) -> bool:
        """Delete a tenant and revoke its keys (kept, revoked, for the audit trail)."""
        await self.db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE tenant = ? AND revoked_at IS NULL", (time.time(), name)
        )
        return await self.db.execute("DELETE FROM tenants WHERE name = ?", (name,)) > 0

    # -- keys -----------------------------------------------------------------------------------
    async def create_key(
        self,
        key_id: str,
        tenant: str,
        secret_hash: str,
        *,
        name: str = "",
        limits: Limits | None = None,
        expires_at: float | None = None,
        now: float | None = None,
    ) -> KeyRow:
        now = time.time() if now is None else now
        await self.db.execute(
            "INSERT INTO api_keys (key_id, tenant, secret_hash, name, limits, created_at, expires_at, "
            "revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
            (key_id, tenant, secret_hash, name, limits_to_json(limits) if limits else None, now, expires_at),
        )
        return KeyRow(key_id, tenant, secret_hash, name, limits, now, expires_at, None)

    async def get_key(self, key_id: str) -> KeyRow | None:
        rows = await self.db.fetch("SELECT * FROM api_keys WHERE key_id = ?", (key_id,))
        return _key(rows[0]) if rows else None

    async def list_keys(self, tenant: str | None = None) -> list[KeyRow]:
        if tenant is None:
            rows = await self.db.fetch("SELECT * FROM api_keys ORDER BY tenant, created_at")
        else:
            rows = await self.db.fetch(
                "SELECT * FROM api_keys WHERE tenant = ? ORDER BY created_at", (tenant,)
            )
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> bool:
        """False when there is no such key or it was revoked already."""
        changed = await self.db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return changed > 0

    # -- usage ----------------------------------------------------------------------------------
    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        """Idempotent per request_id: a batch retried after a partial write counts once."""
        if not records:
            return
        await self.db.executemany(
            _USAGE_INSERT,
            [
                (
                    r.request_id,
                    r.started_at,
                    utc_day(r.started_at),
                    r.tenant,
                    r.subject,
                    r.model,
                    r.endpoint,
                    r.input_tokens,
                    r.output_tokens,
                    r.latency_ms,
                    r.ttft_ms,
                    r.status,
                    r.error_type,
                    r.stream,
                    r.charge,
                )
                for r in records
            ],
        )

    async def usage_totals(
        self, since: float, *, tenant: str | None = None, until: float | None = None
    ) -> list[UsageTotal]:
        """Totals by tenant, model and UTC day for requests started in [since, until)."""
        where = ["started_at >= ?"]
        args: list[Any] = [since]
        if until is not None:
            where.append("started_at < ?")
            args.append(until)
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        rows = await self.db.fetch(
            "SELECT tenant, model, day, COUNT(*) AS requests, "
            "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors, "
            "SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens "
            f"FROM usage WHERE {' AND '.join(where)} GROUP BY tenant, model, day ORDER BY day, tenant, model",
            args,
        )
        return [
            UsageTotal(
                tenant=r["tenant"],
                model=r["model"],
                day=r["day"],
                requests=int(r["requests"]),
                errors=int(r["errors"] or 0),
                input_tokens=int(r["input_tokens"] or 0),
                output_tokens=int(r["output_tokens"] or 0),
            )
            for r in rows
        ]

    async def spend_since(self, since: float) -> list[SpendTotal]:
        """Tokens (input + output) per tenant and subject for requests started at or after `since`."""
        rows = await self.db.fetch(
            "SELECT tenant, subject, SUM(input_tokens + output_tokens) AS tokens FROM usage "
            "WHERE started_at >= ? GROUP BY tenant, subject",
            (since,),
        )
        return [SpendTotal(r["tenant"], r["subject"], int(r["tokens"] or 0)) for r in rows]

    async def model_activity(self, since: float) -> list[ModelActivity]:
        """Requests, errors (status >= 400) and tokens per model for requests started at or after `since`."""
        rows = await self.db.fetch(
            "SELECT model, COUNT(*) AS requests, SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors, "
            "SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens "
            "FROM usage WHERE started_at >= ? GROUP BY model ORDER BY model",
            (since,),
        )
        return [
            ModelActivity(
                model=r["model"],
                requests=int(r["requests"]),
                errors=int(r["errors"] or 0),
                input_tokens=int(r["input_tokens"] or 0),
                output_tokens=int(r["output_tokens"] or 0),
            )
            for r in rows
        ]

    async def ttft_samples(self, since: float, limit: int = 50_000) -> list[tuple[str, float]]:
        """(model, time to first token in ms) of the latest streamed requests started since `since`."""
        rows = await self.db.fetch(
            "SELECT model, ttft_ms FROM usage WHERE started_at >= ? AND ttft_ms IS NOT NULL "
            "ORDER BY started_at DESC LIMIT ?",
            (since, limit),
        )
        return [(r["model"], float(r["ttft_ms"])) for r in rows]

    # -- audit ----------------------------------------------------------------------------------
    async def audit(self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
        """Record a change: who, what, when. Callers never put a key or a secret in `detail`."""
        await self.db.execute(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), actor, action, target, json.dumps(detail or {}, sort_keys=True)),
        )

    async def audit_log(self, since: float = 0.0, limit: int = 1000) -> list[AuditEntry]:
        rows = await self.db.fetch(
            "SELECT at, actor, action, target, detail FROM audit_log WHERE at >= ? ORDER BY id LIMIT ?",
            (since, limit),
        )
        return [
            AuditEntry(float(r["at"]), r["actor"], r["action"], r["target"], json.loads(r["detail"]))
            for r in rows
        ]
