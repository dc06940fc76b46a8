"""Keeps the leases of requests still in flight alive, so a long request (a slow model, a model
waking from zero, a long stream) is never reclaimed while it runs: its slot stays taken and its
settlement stays an ordinary one. A crashed gateway stops renewing, and its leases run out."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from respublica.serving.gateway.contracts import QuotaStore, Reservation

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews every held reservation once per `interval_s` (a third of the lease by default)."""

    def __init__(self, store: QuotaStore, lease_s: float, interval_s: float | None = None) -> None:
        self._store = store
        self.interval_s = interval_s if interval_s is not None else lease_s / 3
        self._held: dict[str, Reservation] = {}
        self._task: asyncio.Task[None] | None = None

    def hold(self, reservation: Reservation) -> None:
        self._held[reservation.id] = reservation

    def release(self, reservation: Reservation) -> None:
        self._held.pop(reservation.id, None)

    @property
    def held(self) -> int:
        return len(self._held)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lease-keeper")

    async def renew(self) -> None:
        if self._held:
            await self._store.extend(list(self._held.values()))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.renew()
            except Exception as exc:  # the store logs its own trouble; this loop must not die
                log.warning("renewing %d leases failed: %s", len(self._held), type(exc).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
