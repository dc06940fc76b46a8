"""The Virtual Token Counter as a pure object: dispatch order, weights, lifting, and the paper's bound
on the service difference between two backlogged tenants over generated traces (a tick simulation:
every dispatched request generates one output token per tick)."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import pytest

from respublica.serving.gateway.fairness.vtc import Hold, Ticket, VirtualTokenCounter, Weights


def test_below_capacity_requests_pass_straight_through() -> None:
    vtc = VirtualTokenCounter(capacity=2)
    assert vtc.arrive(Ticket("a", 10))
    assert vtc.arrive(Ticket("b", 10))
    assert not vtc.arrive(Ticket("a", 10))  # full: it waits
    assert vtc.in_flight == 2 and vtc.waiting == 1


def test_a_newcomer_does_not_jump_a_queue_even_when_a_slot_is_free() -> None:
    """Work-conserving but fair: a free slot with requests waiting is theirs (finish fills it), so an
    arrival between the two events waits like everyone else."""
    vtc = VirtualTokenCounter(capacity=1)
    vtc.arrive(Ticket("a", 1))
    waiting = Ticket("b", 1)
    vtc.arrive(waiting)
    vtc.in_flight = 0  # the slot freed, not yet refilled
    assert not vtc.arrive(Ticket("c", 1))
    assert vtc.finish() == [waiting]


def test_the_least_served_backlogged_tenant_goes_next() -> None:
    vtc = VirtualTokenCounter(capacity=1, weights=Weights(input=1, output=2))
    vtc.arrive(Ticket("a", 100))  # dispatched: a's counter 100
    a2, b1 = Ticket("a", 1), Ticket("b", 1)
    vtc.arrive(a2)  # a is backlogged at 100
    vtc.arrive(b1)  # b lifted to min(backlogged) = 100
    vtc.charge("a", output_tokens=10)  # a streams: 100 + 20
    assert vtc.counter("a") == 120 and vtc.counter("b") == 100
    assert vtc.finish() == [b1]
    assert vtc.finish() == [a2]


def test_weights_divide_service() -> None:
    vtc = VirtualTokenCounter(capacity=1)
    vtc.arrive(Ticket("heavy", 10, weight=2.0))
    vtc.charge("heavy", output_tokens=10, weight=2.0)
    assert vtc.counter("heavy") == (10 + 2 * 10) / 2


def test_interactive_goes_before_batch_whatever_the_counters() -> None:
    vtc = VirtualTokenCounter(capacity=1)
    vtc.arrive(Ticket("x", 1))
    batch = Ticket("cheap", 1, priority="batch")
    interactive = Ticket("rich", 1000)
    vtc.arrive(batch)
    vtc.counters["rich"] = 10_000.0
    vtc.arrive(interactive)
    assert vtc.finish() == [interactive]
    assert vtc.finish() == [batch]


def test_cancel_frees_the_place_and_a_dispatched_ticket_can_not_be_cancelled() -> None:
    vtc = VirtualTokenCounter(capacity=1)
    first = Ticket("a", 1)
    vtc.arrive(first)
    gone = Ticket("b", 1)
    vtc.arrive(gone)
    assert vtc.cancel(gone) and vtc.waiting == 0 and vtc.backlogged() == set()
    assert not vtc.cancel(first)
    assert vtc.finish() == []


def test_resize_fills_the_new_slots() -> None:
    vtc = VirtualTokenCounter(capacity=1)
    vtc.arrive(Ticket("a", 1))
    waiting = [Ticket("b", 1), Ticket("c", 1)]
    for t in waiting:
        vtc.arrive(t)
    assert vtc.resize(3) == waiting


def test_a_tenant_back_from_idle_is_lifted_to_the_backlogged_minimum() -> None:
    """No banked credit: b, away while a was served, comes back at a's level, not at 0."""
    vtc = VirtualTokenCounter(capacity=1)
    vtc.arrive(Ticket("a", 500))
    vtc.arrive(Ticket("a", 500))  # a backlogged at 500
    vtc.counters["b"] = 20.0  # b's service from long ago is kept, but can not buy it a run
    vtc.arrive(Ticket("b", 1))
    assert vtc.counter("b") == 500


def test_with_nobody_waiting_a_returning_tenant_is_lifted_to_the_last_to_leave() -> None:
    vtc = VirtualTokenCounter(capacity=1)
    vtc.arrive(Ticket("a", 300))
    vtc.arrive(Ticket("a", 300))
    vtc.finish()  # a's queue empties: a is the last to leave, at 600
    vtc.arrive(Ticket("b", 1))
    assert vtc.counter("b") == 600


def test_a_tenant_keeps_service_above_the_floor() -> None:
    vtc = VirtualTokenCounter(capacity=1)
    vtc.counters["b"] = 900.0
    vtc.arrive(Ticket("a", 1))
    vtc.arrive(Ticket("a", 1))
    vtc.arrive(Ticket("b", 1))
    assert vtc.counter("b") == 900


# -- anticipation: a freed slot kept for the tenant VTC would serve next


def flooded(capacity: int = 2) -> tuple[VirtualTokenCounter, list[Ticket]]:
    """`light` holds one slot, `flood` the others and has requests waiting, more served than light."""
    vtc = VirtualTokenCounter(capacity=capacity)
    vtc.arrive(Ticket("light", 10))
    for _ in range(capacity - 1):
        vtc.arrive(Ticket("flood", 10))
    waiting = [Ticket("flood", 10) for _ in range(3)]
    for ticket in waiting:
        assert not vtc.arrive(ticket)
    vtc.charge("flood", output_tokens=50)
    return vtc, waiting


def test_a_freed_slot_is_kept_for_the_least_served_tenant_and_taken_when_it_returns() -> None:
    vtc, _ = flooded()
    hold = vtc.keep_for_return("light")
    assert isinstance(hold, Hold) and hold.tenant == "light"
    assert vtc.in_flight == 1 and vtc.held == 1 and vtc.running["light"] == 0
    assert vtc.resize(2) == []  # a kept slot is not free: the flood's queue does not get it
    back = Ticket("light", 10)
    assert vtc.arrive(back)  # dispatched at once, ahead of the flood's waiting requests
    assert back.dispatched and vtc.held == 0 and vtc.in_flight == 2 and vtc.waiting == 3
    assert vtc.expire(hold) is None  # taken: its timer changes nothing
    assert vtc.in_flight == 2 and vtc.waiting == 3


def test_an_expired_hold_goes_to_the_next_waiting_request() -> None:
    vtc, waiting = flooded()
    hold = vtc.keep_for_return("light")
    assert hold is not None
    assert vtc.expire(hold) == [waiting[0]]
    assert vtc.held == 0 and vtc.in_flight == 2
    assert vtc.expire(hold) is None  # once


def test_a_tenant_that_returns_after_its_hold_expired_waits_its_turn() -> None:
    vtc, _ = flooded()
    hold = vtc.keep_for_return("light")
    assert hold is not None
    vtc.expire(hold)
    late = Ticket("light", 10)
    assert not vtc.arrive(late)  # lifted to the flood's level, and queued
    assert vtc.counter("light") == vtc.counter("flood")


def test_no_slot_is_kept_where_vtc_would_not_serve_the_tenant_next() -> None:
    # Nobody waits: a freed slot stays free anyway.
    vtc = VirtualTokenCounter(capacity=2)
    vtc.arrive(Ticket("light", 10))
    assert vtc.keep_for_return("light") is None and vtc.in_flight == 1
    # The tenant has its own request waiting: that request takes the slot.
    vtc, _ = flooded()
    vtc.arrive(Ticket("light", 10))
    assert vtc.keep_for_return("light") is None
    # The tenant was served more than the least served waiting tenant.
    vtc, _ = flooded()
    vtc.charge("light", output_tokens=500)
    assert vtc.keep_for_return("light") is None
    # A better class waits.
    vtc, _ = flooded()
    vtc.arrive(Ticket("other", 1, priority="interactive"))
    assert vtc.keep_for_return("light", priority="batch") is None
    assert vtc.held == 0


def closed_loop(anticipate: int, think: int = 1, ticks: int = 3000) -> tuple[int, int, int]:
    """A tick simulation of the benchmark's shape: `flood` keeps 40 requests waiting; `light` runs
    2 closed-loop workers that send again `think` ticks after an answer; every request generates
    10 tokens, one a tick; a hold lasts `anticipate` ticks (0: no anticipation). Returns light's
    requests done, the ticks its requests waited in all, and the flood's requests done."""
    capacity, length = 8, 10
    vtc = VirtualTokenCounter(capacity=capacity)
    left: dict[int, int] = {}  # id(ticket) -> tokens left, running requests
    tickets: dict[int, Ticket] = {}
    queued_at: dict[int, int] = {}
    holds: list[tuple[int, Hold]] = []  # (expiry tick, hold)
    returns: list[int] = [0, 0]  # the tick each light worker sends next
    done = {"light": 0, "flood": 0}
    waited = 0

    def send(tenant: str, now: int) -> None:
        ticket = Ticket(tenant, 10)
        tickets[id(ticket)] = ticket
        if vtc.arrive(ticket):
            left[id(ticket)] = length
        else:
            queued_at[id(ticket)] = now

    def started(dispatched: list[Ticket], now: int) -> None:
        nonlocal waited
        for ticket in dispatched:
            left[id(ticket)] = length
            if ticket.tenant == "light":
                waited += now - queued_at.pop(id(ticket))
            else:
                queued_at.pop(id(ticket), None)

    for now in range(ticks):
        for at in returns:
            if at == now:
                send("light", now)
        if now == 0:  # light's first requests found free slots; the flood comes in behind them
            for _ in range(40):
                send("flood", 0)
        for _, hold in [h for h in holds if h[0] == now]:
            started(vtc.expire(hold) or [], now)
        holds = [h for h in holds if h[0] > now]
        for key in list(left):
            ticket = tickets[key]
            left[key] -= 1
            vtc.charge(ticket.tenant, 1)
            if left[key]:
                continue
            del left[key]
            done[ticket.tenant] += 1
            if ticket.tenant == "flood":
                send("flood", now)  # the flood stays backlogged
                hold = None
            else:
                returns[returns.index(min(returns))] = now + think
                hold = vtc.keep_for_return("light") if anticipate else None
            if hold is not None:
                holds.append((now + anticipate, hold))
            else:
                started(vtc.finish(ticket.tenant), now)
    return done["light"], waited, done["flood"]


def test_anticipation_lets_a_closed_loop_tenant_return_without_waiting() -> None:
    """With the hold at least as long as the client's think time, the light tenant never waits and
    gets all it asks for; without it, each return waits for the next slot to free. The slots idle
    only for the think time, so the flood loses at most that share."""
    light_off, waited_off, flood_off = closed_loop(anticipate=0)
    light_on, waited_on, flood_on = closed_loop(anticipate=3)
    assert waited_off > 0 and waited_on == 0
    assert light_on > light_off
    assert light_on >= 2 * 3000 // 11 - 2  # alone: one request per 10 + 1 ticks per worker
    assert flood_on + light_on >= 0.95 * (flood_off + light_off)


def test_a_hold_idles_its_slot_at_most_its_length_when_the_tenant_does_not_return() -> None:
    light, waited, _ = closed_loop(anticipate=3, think=5)  # returns after the hold expired
    assert light > 0 and waited > 0  # it waited like anyone: the holds expired, none was taken


# -- the bound, over generated traces


@dataclass
class Job:
    tenant: str
    input_tokens: int
    output_tokens: int
    ticket: Ticket = field(init=False)
    left: int = field(init=False)

    def __post_init__(self) -> None:
        self.left = self.output_tokens


def simulate(
    jobs: dict[str, list[Job]],
    capacity: int,
    weights: Weights,
    tenant_weight: dict[str, float],
    fcfs: bool = False,
    ticks: int = 2000,
) -> list[float]:
    """Every tenant's jobs arrive at tick 0 in the given interleaving (a's first: the worst case for
    first come first served), so all stay backlogged; one token per tick per running job. Returns
    d(t) = W_a(0, t) - W_b(0, t), each tenant's service divided by its weight."""
    vtc = VirtualTokenCounter(capacity=capacity, weights=weights)
    service = {t: 0.0 for t in jobs}
    by_ticket: dict[int, Job] = {}
    running: list[Job] = []
    order: deque[Job] = deque()  # first come first served: the arrival order
    for tenant in jobs:  # a's whole backlog, then b's
        for job in jobs[tenant]:
            job.ticket = Ticket(tenant, job.input_tokens, weight=tenant_weight[tenant])
            by_ticket[id(job.ticket)] = job
            order.append(job)

    def started(job: Job) -> None:
        running.append(job)
        service[job.tenant] += weights.input * job.input_tokens / tenant_weight[job.tenant]

    for job in order if not fcfs else ():
        if vtc.arrive(job.ticket):
            started(job)
    if fcfs:
        while len(running) < capacity:
            started(order.popleft())
    out = []
    for _ in range(ticks):
        for job in list(running):
            job.left -= 1
            w = tenant_weight[job.tenant]
            service[job.tenant] += weights.output / w
            vtc.charge(job.tenant, 1, w)
            if job.left == 0:
                running.remove(job)
                if fcfs:
                    if order:
                        started(order.popleft())
                else:
                    # Anticipation never keeps a slot for a backlogged tenant.
                    assert vtc.keep_for_return(job.tenant) is None
                    for ticket in vtc.finish(job.tenant):
                        started(by_ticket[id(ticket)])
        out.append(service["a"] - service["b"])
    return out


TICKS = 2000


def trace(rng: random.Random, n: int, max_in: int, max_out: int, tenant: str) -> list[Job]:
    return [Job(tenant, rng.randint(1, max_in), rng.randint(1, max_out)) for _ in range(n)]


def widest_window(d: list[float]) -> float:
    """max over t1 < t2 of |W_a(t1, t2) - W_b(t1, t2)| = max d - min d (d from 0)."""
    values = [0.0, *d]
    return max(values) - min(values)


def paper_bound(weights: Weights, capacity: int, max_in: int, max_out: int) -> float:
    """Sheng et al., Theorem 4.4: 2 * max(w_in * L_input, w_out * M), where M is what one batch
    holds; here a batch is `capacity` requests of up to `max_out` output tokens."""
    return 2 * max(weights.input * max_in, weights.output * capacity * max_out)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("max_in_b", "max_out_b"), [(64, 32), (8, 4)])  # b alike, or b much lighter
def test_two_backlogged_tenants_stay_within_the_bound(seed: int, max_in_b: int, max_out_b: int) -> None:
    rng = random.Random(seed)
    capacity, max_in, max_out = 8, 64, 32
    weights = Weights()
    # Enough jobs that neither runs dry: each holds a slot at least a tick.
    jobs = {
        "a": trace(rng, TICKS * capacity, max_in, max_out, "a"),
        "b": trace(rng, TICKS * capacity, max_in_b, max_out_b, "b"),
    }
    d = simulate(jobs, capacity, weights, {"a": 1.0, "b": 1.0})
    assert widest_window(d) <= paper_bound(weights, capacity, max_in, max_out)


def test_first_come_first_served_breaks_the_bound_on_the_same_trace() -> None:
    """The check can fail: FCFS serves a's earlier backlog alone, and the gap grows without end."""
    rng = random.Random(0)
    capacity, max_in, max_out = 8, 64, 32
    weights = Weights()
    jobs = {"a": trace(rng, 2000, max_in, max_out, "a"), "b": trace(rng, 2000, max_in, max_out, "b")}
    d = simulate(jobs, capacity, weights, {"a": 1.0, "b": 1.0}, fcfs=True)
    assert widest_window(d) > 10 * paper_bound(weights, capacity, max_in, max_out)


def test_weighted_tenants_get_service_in_proportion() -> None:
    rng = random.Random(7)
    capacity, max_in, max_out = 8, 64, 32
    weights = Weights()
    jobs = {
        "a": trace(rng, TICKS * capacity, max_in, max_out, "a"),
        "b": trace(rng, TICKS * capacity, max_in, max_out, "b"),
    }
    d = simulate(jobs, capacity, weights, {"a": 2.0, "b": 1.0})  # d is of service / weight
    assert widest_window(d) <= paper_bound(weights, capacity, max_in, max_out)
