"""The Virtual Token Counter of one model: who goes next when its slots are full.

Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024, arXiv 2401.00588),
Algorithm 2, adapted from a batch of KV-cache memory to a number of request slots (the engines'
concurrency). Pure: no clock, no I/O, no asyncio; the gate (gate.py) carries out what it says.

- Each tenant has a counter `c`: the weighted service it received,
  `c += w_in * input_tokens / weight` at dispatch and `c += w_out * output_tokens / weight` as its
  output streams (`charge`).
- Below capacity with nobody waiting a request is dispatched at once (work-conserving).
- Otherwise it waits in its tenant's queue (one per priority class); when a slot frees, the head of
  the queue of the backlogged tenant with the least counter in the highest waiting class goes next.
- A tenant that was not backlogged is lifted on arrival: to the least counter of the backlogged
  tenants, or, when none is backlogged, to the counter of the last tenant to leave the queue — so
  idle time banks no credit, and service it received earlier is kept.
- Anticipation (`keep_for_return`): when a request ends while others wait, and its tenant has
  nothing waiting but would be served next if it had (no better class waiting, its counter at most
  the least waiting one's), the slot is kept for that tenant's next request for a moment instead of
  going to the queue. A closed-loop client (an interactive user, an agent) sends its next request a
  few milliseconds after an answer ends; without the hold that request finds every slot just taken
  by the flood and waits a whole slot-free interval for a place that VTC would have given it anyway.
  This is anticipatory scheduling (Iyer and Druschel, SOSP 2001) applied to slots: it changes who
  is served only within the order VTC already decides, and idles at most one slot per ended request
  for the hold's length (the gate expires a hold it does not see taken: `expire`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from respublica.serving.gateway.contracts import PRIORITIES, Priority

_RANK = {p: i for i, p in enumerate(PRIORITIES)}


@dataclass(frozen=True, slots=True)
class Weights:
    """Cost of a token by kind; the paper's defaults: an output token costs two input tokens."""

    input: float = 1.0
    output: float = 2.0


@dataclass(eq=False, slots=True)
class Ticket:
    """One request asking for a slot. Identity is the ticket itself (two tickets never equal)."""

    tenant: str
    input_tokens: int
    weight: float = 1.0  # the tenant's fair-share weight
    priority: Priority = "interactive"
    dispatched: bool = False


@dataclass(eq=False, slots=True)
class Hold:
    """A freed slot kept for the next request of `tenant` (anticipation). Identity is the hold."""

    tenant: str


@dataclass(slots=True)
class VirtualTokenCounter:
    capacity: int
    weights: Weights = field(default_factory=Weights)
    in_flight: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    # (rank, tenant) -> its waiting tickets, oldest first; an empty queue is removed.
    queues: dict[tuple[int, str], deque[Ticket]] = field(default_factory=dict)
    last_left: str | None = None  # the tenant whose queue emptied last (the lift with nobody waiting)
    running: dict[str, int] = field(default_factory=dict)  # dispatched requests per tenant
    # tenant -> the slots kept for its next requests, oldest first; an empty deque is removed.
    holds: dict[str, deque[Hold]] = field(default_factory=dict)
    held: int = 0  # slots kept, all tenants: neither in flight nor free

    # -- questions

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def backlogged(self) -> set[str]:
        return {tenant for _, tenant in self.queues}

    def queued(self, tenant: str) -> int:
        return sum(len(q) for (_, t), q in self.queues.items() if t == tenant)

    def counter(self, tenant: str) -> float:
        return self.counters.get(tenant, 0.0)

    # -- events

    def arrive(self, ticket: Ticket) -> bool:
        """A request asks for a slot: True when it is dispatched now, False when it waits."""
        self._lift(ticket.tenant)
        if self._take_hold(ticket.tenant) or (self.in_flight + self.held < self.capacity and not self.queues):
            self._dispatch(ticket)
            return True
        self.queues.setdefault((_RANK[ticket.priority], ticket.tenant), deque()).append(ticket)
        return False

    def finish(self, tenant: str | None = None) -> list[Ticket]:
        """A dispatched request (of `tenant`) ended: its slot goes to whoever is next; the tickets
        dispatched."""
        self.in_flight = max(0, self.in_flight - 1)
        if tenant is not None and self.running.get(tenant, 0) > 0:
            self.running[tenant] -= 1
        return self._fill()

    def keep_for_return(self, tenant: str, priority: Priority = "interactive") -> Hold | None:
        """A dispatched request of `tenant` ended and its slot is worth keeping for the tenant's next
        request (see the module's "Anticipation"): the slot is held, not refilled, and the Hold is
        returned for the caller to `expire`. None when it is not worth it: nothing changed, and the
        caller calls `finish` as usual."""
        if not self._worth_holding(tenant, _RANK[priority]):
            return None
        self.in_flight = max(0, self.in_flight - 1)
        if self.running.get(tenant, 0) > 0:
            self.running[tenant] -= 1
        hold = Hold(tenant)
        self.holds.setdefault(tenant, deque()).append(hold)
        self.held += 1
        return hold

    def expire(self, hold: Hold) -> list[Ticket] | None:
        """A hold's time is up: if its tenant did not take it, the slot goes to whoever is next (the
        tickets dispatched); a hold already taken changes nothing (None)."""
        kept = self.holds.get(hold.tenant)
        if kept is None or hold not in kept:
            return None
        kept.remove(hold)
        if not kept:
            del self.holds[hold.tenant]
        self.held -= 1
        return self._fill()

    def cancel(self, ticket: Ticket) -> bool:
        """A waiting request gave up (timeout, client gone): True when it was still waiting."""
        key = (_RANK[ticket.priority], ticket.tenant)
        queue = self.queues.get(key)
        if queue is None or ticket not in queue:
            return False
        queue.remove(ticket)
        if not queue:
            self._drop(key)
        return True

    def charge(self, tenant: str, output_tokens: int, weight: float = 1.0, input_tokens: int = 0) -> None:
        """Service a tenant received after dispatch: output tokens as they stream, and corrections of
        the input charge (negative where the real prompt was shorter than the bound charged)."""
        cost = self.weights.output * output_tokens + self.weights.input * input_tokens
        if cost:
            self.counters[tenant] = self.counter(tenant) + cost / weight

    def resize(self, capacity: int) -> list[Ticket]:
        """The model's capacity changed (replicas came or went): fill what opened."""
        self.capacity = max(1, capacity)
        return self._fill()

    # -- the rule

    def _worth_holding(self, tenant: str, rank: int) -> bool:
        """Others wait (else a freed slot stays free anyway), the tenant has nothing waiting (else its
        own queue takes the slot), no better class waits, and its counter is at most the least of
        the waiting tenants' in the best waiting class: VTC would serve it next."""
        if not self.queues or tenant in self.backlogged():
            return False
        best = min(r for r, _ in self.queues)
        if best < rank:
            return False
        least = min(self.counter(t) for r, t in self.queues if r == best)
        return rank < best or self.counter(tenant) <= least

    def _take_hold(self, tenant: str) -> bool:
        kept = self.holds.get(tenant)
        if not kept:
            return False
        kept.popleft()
        if not kept:
            del self.holds[tenant]
        self.held -= 1
        return True

    def _lift(self, tenant: str) -> None:
        if tenant in self.backlogged():
            return
        if self.queues:
            floor = min(self.counter(t) for t in self.backlogged())
        elif self.last_left is not None:
            floor = self.counter(self.last_left)
        else:
            floor = 0.0
        self.counters[tenant] = max(self.counter(tenant), floor)

    def _fill(self) -> list[Ticket]:
        started: list[Ticket] = []
        while self.in_flight + self.held < self.capacity and self.queues:
            # Equal counters (a returning tenant is lifted to exactly the least): the tenant with
            # fewer requests running goes first, so a light tenant is not sent behind a flood's
            # backlog by a tie; then the name, so the order is deterministic.
            key = min(self.queues, key=lambda k: (k[0], self.counter(k[1]), self.running.get(k[1], 0), k[1]))
            queue = self.queues[key]
            ticket = queue.popleft()
            if not queue:
                self._drop(key)
            self._dispatch(ticket)
            started.append(ticket)
        return started

    def _dispatch(self, ticket: Ticket) -> None:
        ticket.dispatched = True
        self.in_flight += 1
        self.running[ticket.tenant] = self.running.get(ticket.tenant, 0) + 1
        self.charge(ticket.tenant, 0, ticket.weight, input_tokens=ticket.input_tokens)

    def _drop(self, key: tuple[int, str]) -> None:
        del self.queues[key]
        if key[1] not in self.backlogged():
            self.last_left = key[1]
