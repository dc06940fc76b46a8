"""A small time-to-live cache for the authentication hot path."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING = object()


class TtlCache(Generic[K, V]):
    """Entries live `ttl_s` (0 disables caching); the oldest are evicted past `max_entries`."""

    def __init__(
        self, ttl_s: float, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V]] = {}

    def get(self, key: K) -> tuple[bool, V | None]:
        """(hit, value); a hit may hold None (a cached "not found")."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if entry[0] <= self._clock():
            del self._entries[key]
            return False, None
        return True, entry[1]

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, else `load()`'s, which is then cached. Callers that miss while a load
        of the same key runs wait for that one: when an entry expires under load, every request in
        flight missed it at once and each read the database (a burst of identical queries every
        `ttl_s`). A caller cancelled while waiting does not cancel the load the others wait for;
        a failed load is every waiter's error and caches nothing."""
        hit, value = self.get(key)
        if hit:
            return value  # type: ignore[return-value]  # a hit holds what was put: a V
        if self.ttl_s <= 0:
            return await load()  # no caching: every request reads
        pending = self._loading.get(key)
        if pending is None:

            async def run() -> V:
                try:
                    loaded = await load()
                    if self._loading.get(key) is pending:  # not discarded while it read
                        self.put(key, loaded)
                    return loaded
                finally:
                    if self._loading.get(key) is pending:
                        del self._loading[key]

            pending = self._loading[key] = asyncio.ensure_future(run())
        return await asyncio.shield(pending)

    def put(self, key: K, value: V) -> None:
        if self.ttl_s <= 0:
            return
        self._entries[key] = (self._clock() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        """Forget the key, and a read of it in flight: what that read returns is not cached (a key
        revoked while its row was being read must not come back), and the next caller reads again."""
        self._entries.pop(key, None)
        self._loading.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._loading.clear()
