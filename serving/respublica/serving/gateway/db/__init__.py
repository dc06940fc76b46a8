"""The gateway's one database: tenants, API keys, the usage ledger and the audit log.

SQLite (the default, one file, WAL) or PostgreSQL (production), chosen by URL, behind the same
small `Database` interface; `Repository` holds every query the gateway and the CLI make.
"""

from __future__ import annotations

from respublica.serving.gateway.db.base import Database, DatabaseError, open_database
from respublica.serving.gateway.db.repo import (
    AuditEntry,
    KeyRow,
    Repository,
    SpendTotal,
    TenantRow,
    UsageTotal,
)

__all__ = [
    "AuditEntry",
    "Database",
    "DatabaseError",
    "KeyRow",
    "Repository",
    "SpendTotal",
    "TenantRow",
    "UsageTotal",
    "open_database",
]
