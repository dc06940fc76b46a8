"""Keeps the leases of requests still in flight alive, so a long request (a slow model, a model
waking from zero, a long stream) is never reclaimed while it runs: its slot stays taken and its
settlement stays an ordinary one. A crashed gateway stops renewing, and its leases run out."""

from __future__ import annotations

from respublica.serving.gateway.contracts import QuotaStore, Reservation
from respublica.serving.gateway.periodic import Periodic


class LeaseKeeper:
    """Renews every held reservation once per `interval_s` (a third of the lease by default)."""

    def __init__(self, store: QuotaStore, lease_s: float, interval_s: float | None = None) -> None:
        self._store = store
        self.interval_s = interval_s if interval_s is not None else lease_s / 3
        self._held: dict[str, Reservation] = {}
        self._loop = Periodic(self.renew, self.interval_s, name="renewing the leases of requests in flight")

    def hold(self, reservation: Reservation) -> None:
        self._held[reservation.id] = reservation

    def release(self, reservation: Reservation) -> None:
        self._held.pop(reservation.id, None)

    @property
    def held(self) -> int:
        return len(self._held)

    def start(self) -> None:
        self._loop.start()

    async def renew(self) -> None:
        if self._held:
            await self._store.extend(list(self._held.values()))

    async def close(self) -> None:
        await self._loop.stop()
