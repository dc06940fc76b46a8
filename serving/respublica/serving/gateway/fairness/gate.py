"""The asyncio edge of fair sharing: a request waits here for a slot of its model, between the plan
and the admission (routes/openai.py), and gives the slot back in the `finally` that settles it.

The decisions are the pure `VirtualTokenCounter`'s (vtc.py), one per model; this module only
parks requests on futures, wakes the ones it dispatches, bounds the waiting (a queue limit per
tenant: 429; a longest wait: 503; both with Retry-After), notices a client that leaves while it
waits, and reports (metrics, the /admin view).

Waiting comes before admission on purpose: a waiting request holds no quota reservation and no
concurrency slot of the quota store, and does not count against the requests per minute until it
is dispatched. Its tokens are reserved (and may be refused) only once it has a slot; a refused one
gives the slot back at once, through the same `finally`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive

from respublica.serving.gateway.contracts import PRIORITIES, Principal
from respublica.serving.gateway.errors import GatewayError, retry_after
from respublica.serving.gateway.fairness.capacity import process_capacity
from respublica.serving.gateway.fairness.vtc import Hold, Ticket, VirtualTokenCounter, Weights
from respublica.serving.gateway.routes.asgi import ClientGone, until_disconnect
from respublica.serving.gateway.routes.plan import Plan
from respublica.serving.gateway.settings import FairnessSettings
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics

_EWMA = 0.2  # weight of the latest hold time in a model's mean (for Retry-After)


@dataclass(slots=True)
class _Model:
    vtc: VirtualTokenCounter
    mean_hold_s: float = 1.0  # how long a request holds a slot, on average (exponential mean)


class Slot:
    """A dispatched request's hold on its model; `release` exactly once (the settling `finally`)."""

    __slots__ = ("counted", "gate", "model", "released", "started", "ticket")

    def __init__(self, gate: FairnessGate, model: str, ticket: Ticket, started: float) -> None:
        self.gate = gate
        self.model = model
        self.ticket = ticket
        self.started = started
        self.counted = 0  # output tokens already counted into the tenant's service
        self.released = False

    def progress(self, output_tokens: int) -> None:
        """A stream's output so far (cumulative); counted every `output_every` tokens. Per event this
        is one subtraction and one comparison."""
        if output_tokens - self.counted >= self.gate.every:
            self.gate.charge(self, output_tokens - self.counted, 0)
            self.counted = output_tokens

    def release(self, input_tokens: int | None, output_tokens: int | None) -> None:
        """The request ended: the rest of its output counted, the slot handed on.

        The input stays charged at the bound charged at dispatch (the plan's prompt bound, an upper
        bound from the text's size), never corrected down to the model's count: a tenant lifted to
        another's counter must not find that counter lowered afterwards, or the lift would be
        undone and the other tenant would win every slot until its corrections ran out. Every
        tenant is measured by the same rule, so shares stay fair; `input_tokens` is unused."""
        if self.released:
            return
        self.released = True
        rest = (output_tokens or 0) - self.counted
        self.gate.charge(self, max(rest, 0), 0)
        self.gate.finish(self)


class FairnessGate:
    """Per-model virtual token counters of this gateway process, and the requests waiting on them."""

    def __init__(
        self,
        settings: FairnessSettings,
        processes: int = 1,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.processes = max(1, processes)  # gateway replicas x worker processes
        self.metrics = metrics
        self.clock = clock
        self.weights = Weights(settings.input_weight, settings.output_weight)
        self.every = settings.output_every
        self.anticipation_s = settings.anticipation_ms / 1000
        self.models: dict[str, _Model] = {}
        self._waiters: dict[Ticket, asyncio.Future[None]] = {}

    def capacity_of(self, model: str, route_capacity: int | None) -> int | None:
        return process_capacity(model, route_capacity, self.settings.capacity, self.processes)

    async def acquire(self, principal: Principal | None, plan: Plan, receive: Receive) -> Slot | None:
        """A slot of the plan's model, now or after waiting; None where the model is not gated (or
        the caller is unknown, which a plan never has). Raises GatewayError (429 queue full, 503
        waited too long) or ClientGone."""
        route = plan.route
        capacity = self.capacity_of(route.name, route.capacity) if self.settings.enabled else None
        if capacity is None or principal is None:
            return None
        model = self._model(route.name, capacity)
        vtc = model.vtc
        tenant = principal.tenant
        ticket = Ticket(
            tenant=tenant,
            input_tokens=plan.prompt_bound,
            weight=principal.tenant_limits.fair_share_weight or 1.0,
            priority=principal.priority,
        )
        if vtc.queues or vtc.in_flight + vtc.held >= vtc.capacity:
            limit = principal.tenant_limits.max_queued
            if limit is None:
                limit = self.settings.max_queued
            if vtc.queued(tenant) >= limit:
                raise GatewayError(
                    429,
                    "queue_full",
                    f"model '{route.name}' is saturated and tenant '{tenant}' already has {limit} "
                    "request(s) waiting for it; retry later",
                    headers=[retry_after(self._retry_after(model))],
                )
        started = self.clock()
        held = vtc.held
        if vtc.arrive(ticket):
            if vtc.held < held and self.metrics is not None:
                self.metrics.fair_holds.labels(route.name, "taken").inc()
            self._charged(tenant, route.name, ticket)
            return Slot(self, route.name, ticket, started)
        # A model still waking (no replica ready) may keep a request waiting for its wake budget.
        max_wait_s = max(self.settings.max_wait_s, route.slot_wait_s or 0.0)
        return await self._wait(model, route.name, ticket, started, receive, max_wait_s)

    async def _wait(
        self, model: _Model, name: str, ticket: Ticket, started: float, receive: Receive, max_wait_s: float
    ) -> Slot:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = future
        queued = self.metrics.fair_queue_length.labels(ticket.tenant, name) if self.metrics else None
        if queued is not None:
            queued.inc()
        watcher = asyncio.ensure_future(until_disconnect(receive))
        taken = False
        try:
            done, _ = await asyncio.wait(
                {future, watcher}, timeout=max_wait_s, return_when=asyncio.FIRST_COMPLETED
            )
            if ticket.dispatched:  # dispatched, even if the clock or the client raced it
                taken = True
                self._charged(ticket.tenant, name, ticket)
                if self.metrics is not None:
                    self.metrics.fair_queue_wait.labels(ticket.tenant, name).observe(self.clock() - started)
                return Slot(self, name, ticket, self.clock())
            if watcher in done:
                raise ClientGone
            raise GatewayError(
                503,
                "capacity_timeout",
                f"model '{name}' stayed saturated for {max_wait_s:g} s while this request "
                "waited for a slot; retry later",
                headers=[retry_after(self._retry_after(model))],
            )
        finally:
            watcher.cancel()
            del self._waiters[ticket]
            if queued is not None:
                queued.dec()
            if not taken:
                if ticket.dispatched:  # a slot given to a request that is gone: hand it on
                    self._wake(model.vtc.finish(ticket.tenant))
                else:
                    model.vtc.cancel(ticket)  # its place in the queue is freed

    def charge(self, slot: Slot, output_tokens: int, input_tokens: int) -> None:
        model = self.models.get(slot.model)
        if model is None:
            return
        ticket = slot.ticket
        before = model.vtc.counter(ticket.tenant)
        model.vtc.charge(ticket.tenant, output_tokens, ticket.weight, input_tokens=input_tokens)
        self._service(ticket.tenant, slot.model, model.vtc.counter(ticket.tenant) - before)

    def finish(self, slot: Slot) -> None:
        model = self.models.get(slot.model)
        if model is None:
            return
        held = self.clock() - slot.started
        model.mean_hold_s += _EWMA * (held - model.mean_hold_s)
        ticket = slot.ticket
        if self.anticipation_s > 0:
            hold = model.vtc.keep_for_return(ticket.tenant, ticket.priority)
            if hold is not None:
                loop = asyncio.get_running_loop()
                loop.call_later(self.anticipation_s, self._expire, slot.model, model, hold)
                return
        self._wake(model.vtc.finish(ticket.tenant))

    def snapshot(self) -> dict[str, Any]:
        """The /admin view: per model, its slots, and per tenant its counter and waiting requests."""
        models = []
        for name, model in sorted(self.models.items()):
            vtc = model.vtc
            tenants = sorted(set(vtc.counters) | vtc.backlogged())
            models.append(
                {
                    "model": name,
                    "capacity": vtc.capacity,
                    "in_flight": vtc.in_flight,
                    "held": vtc.held,
                    "waiting": vtc.waiting,
                    "mean_hold_s": round(model.mean_hold_s, 3),
                    "tenants": [
                        {
                            "tenant": t,
                            "service": round(vtc.counter(t), 1),
                            "waiting": {
                                p: len(vtc.queues.get((rank, t), ())) for rank, p in enumerate(PRIORITIES)
                            },
                        }
                        for t in tenants
                    ],
                }
            )
        settings: Mapping[str, Any] = self.settings.model_dump(mode="json")
        return {
            "enabled": self.settings.enabled,
            "processes": self.processes,
            "settings": settings,
            "models": models,
        }

    # -- inside

    def _model(self, name: str, capacity: int) -> _Model:
        model = self.models.get(name)
        if model is None:
            model = self.models[name] = _Model(VirtualTokenCounter(capacity, self.weights))
        elif model.vtc.capacity != capacity:
            self._wake(model.vtc.resize(capacity))
        return model

    def _expire(self, name: str, model: _Model, hold: Hold) -> None:
        """A hold's time is up (a no-op where its tenant took it)."""
        dispatched = model.vtc.expire(hold)
        if dispatched is None:
            return
        if self.metrics is not None:
            self.metrics.fair_holds.labels(name, "expired").inc()
        self._wake(dispatched)

    def _wake(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            future = self._waiters.get(ticket)
            if future is not None and not future.done():
                future.set_result(None)

    def _charged(self, tenant: str, model: str, ticket: Ticket) -> None:
        """The input charge made at dispatch, reported."""
        self._service(tenant, model, self.weights.input * ticket.input_tokens / ticket.weight)

    def _service(self, tenant: str, model: str, amount: float) -> None:
        if self.metrics is not None and amount > 0:
            self.metrics.fair_service.labels(tenant, model).inc(amount)

    def _retry_after(self, model: _Model) -> float:
        """About when a new request would get a slot: the waiting requests drained at the rate
        slots free (capacity per mean hold time)."""
        vtc = model.vtc
        return max(1.0, math.ceil((vtc.waiting + 1) * model.mean_hold_s / max(1, vtc.capacity)))
