"""Where a tenant's limits come from: the tenants file first, then the database (cached)."""

from __future__ import annotations

from collections.abc import Mapping

from respublica.serving.gateway.auth.cache import TtlCache
from respublica.serving.gateway.contracts import Limits
from respublica.serving.gateway.db.repo import Repository


class TenantDirectory:
    def __init__(
        self, repo: Repository | None, declared: Mapping[str, Limits] | None = None, *, ttl_s: float = 5.0
    ) -> None:
        self.repo = repo
        self.declared: dict[str, Limits] = dict(declared or {})
        self._cache: TtlCache[str, Limits | None] = TtlCache(ttl_s)

    def is_declared(self, name: str) -> bool:
        return name in self.declared

    async def limits(self, name: str) -> Limits | None:
        """The tenant's limits, or None when no file or database knows it. Raises DatabaseError."""
        if name in self.declared:
            return self.declared[name]
        if self.repo is None:
            return None
        repo = self.repo

        async def load() -> Limits | None:
            row = await repo.get_tenant(name)
            return row.limits if row else None

        return await self._cache.get_or_load(name, load)

    def forget(self, name: str) -> None:
        """Drop a cached tenant (this process changed it)."""
        self._cache.discard(name)
