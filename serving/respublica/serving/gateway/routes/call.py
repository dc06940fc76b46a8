"""One request's record, and what happens once it is over: settle the reservation, then observe it
(end the span, count the metrics, write the ledger line). Shared by the endpoints through
`GatewayContext`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer
from starlette.types import Scope

from respublica.serving.gateway.contracts import (
    Authenticator,
    AuthError,
    Ledger,
    Principal,
    QuotaStore,
    Reservation,
    UsageRecord,
)
from respublica.serving.gateway.errors import GatewayError
from respublica.serving.gateway.ids import new_id
from respublica.serving.gateway.ledger import SqlLedger
from respublica.serving.gateway.quota.keeper import LeaseKeeper
from respublica.serving.gateway.routes.asgi import header
from respublica.serving.gateway.routes.plan import Plan
from respublica.serving.gateway.routes.running import RequestsRunning
from respublica.serving.gateway.routing.balancer import LeastOutstanding
from respublica.serving.gateway.routing.table import RouteHolder
from respublica.serving.gateway.telemetry import tracing as t
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics
from respublica.serving.gateway.upstream import UpstreamClient

if TYPE_CHECKING:
    from respublica.serving.gateway.fairness.gate import FairnessGate, Slot

log = logging.getLogger("respublica.gateway")

UNKNOWN_MODEL = "_unknown"  # metric label for a model name that is not served: clients choose names freely


@dataclass
class GatewayContext:
    """What the endpoints share: the policy side's implementations and the HTTP side's parts."""

    authenticator: Authenticator
    quota: QuotaStore
    ledger: Ledger
    routes: RouteHolder
    upstream: UpstreamClient
    tracer: Tracer
    metrics: GatewayMetrics | None = None
    leases: LeaseKeeper | None = None  # renews the leases of requests in flight
    balancer: LeastOutstanding = field(default_factory=LeastOutstanding)
    max_body_bytes: int = 8 * 1024 * 1024
    body_timeout_s: float = 30.0  # the whole body, not each chunk: a trickle can not reset it
    record_content: bool = False
    # The cap written upstream where neither the client nor its key or tenant set one.
    default_max_tokens: int = 1024
    fairness: FairnessGate | None = None  # fair sharing of saturated models (fairness/); None: off
    running: RequestsRunning = field(default_factory=RequestsRunning)  # what shutdown waits for


class Call:
    """What one request did, for the settlement, the span, the metrics and the ledger.

    Written only by the endpoint (routes/openai.py) as the request goes; read once, when it is
    over, by `settle_and_observe`. What was decided up front is the immutable `plan`."""

    __slots__ = (
        "charge",
        "endpoint",
        "error_type",
        "finish_reasons",
        "input_tokens",
        "model",
        "output_tokens",
        "plan",
        "principal",
        "rate_headers",
        "request_id",
        "reservation",
        "response_started",
        "slot",
        "span_attributes",
        "started",
        "status",
        "t0",
        "ttft",
    )

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.started = time.time()
        self.request_id = new_id()  # one cheap id per request (ids.py)
        self.principal: Principal | None = None
        self.model = UNKNOWN_MODEL
        self.plan: Plan | None = None
        self.status = 200
        self.error_type: str | None = None
        self.finish_reasons: list[str] = []
        self.reservation: Reservation | None = None
        self.rate_headers: list[tuple[bytes, bytes]] = []
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.ttft: float | None = None
        self.endpoint = ""  # the model server the body was sent to; "" while none may have it
        self.response_started = False  # a stream's headers went out: an error can only end it
        self.charge = "usage"  # why the tokens charged are what they are (UsageRecord.charge)
        self.slot: Slot | None = None  # its model's slot under fair sharing, released as it settles
        # Span attributes learnt on the way (model, cap, server, response), set with the rest in
        # one call when the span ends: each `set_attribute` takes the span's lock and validates.
        self.span_attributes: dict[str, Any] = {}

    @property
    def stream(self) -> bool:
        return self.plan is not None and self.plan.stream

    @property
    def sent(self) -> bool:
        """The body may have reached the model: it may have generated."""
        return bool(self.endpoint)


async def authenticate(ctx: GatewayContext, scope: Scope) -> Principal:
    try:
        return await ctx.authenticator.authenticate(header(scope, b"authorization"))
    except AuthError as exc:
        raise GatewayError(exc.status, exc.code, exc.message) from None


async def settle_and_observe(ctx: GatewayContext, call: Call, span: trace.Span) -> None:
    """The end of every request, called from one place (`OpenAIEndpoint.__call__`'s `finally`):
    settle the reservation, then end the span, count the metrics and write the ledger line.

    A shutdown that cancels the request while it settles does not skip the observation: the
    shielded settlement goes on, the request is still traced, counted and recorded (no await
    follows), and then the cancellation goes on."""
    latency = time.perf_counter() - call.t0  # the request's own time, not its settlement's
    cancelled = await _settle(ctx, call)
    _observe(ctx, call, span, latency)
    if isinstance(ctx.ledger, SqlLedger):
        # The ledger line is on local disk before the answer completes (journal.py: group fsync).
        # The waiter is this request's own future: a cancel ends only this wait, so it needs no
        # shield (and no task made for one).
        waiter = ctx.ledger.durable_waiter()
        if waiter is not None:
            try:
                await waiter
            except asyncio.CancelledError as exc:
                cancelled = cancelled or exc
    if cancelled is not None:
        raise cancelled


async def _settle(ctx: GatewayContext, call: Call) -> asyncio.CancelledError | None:
    """Charge what the request used and release the rest (nothing to do if it was never admitted)."""
    reservation = call.reservation
    if reservation is None:
        return None
    if ctx.leases is not None:
        ctx.leases.release(reservation)
    used = settled_tokens(call, reservation)
    if used > reservation.tokens:
        # The prompt bound was too low: the actual usage is charged all the same, and this
        # makes the estimator's miss visible. Counts only, never content.
        log.warning(
            "request %s used %d tokens, more than the %d reserved (model %s)",
            call.request_id,
            used,
            reservation.tokens,
            call.model,
        )
        if ctx.metrics is not None:
            tenant = call.principal.tenant if call.principal is not None else ""
            ctx.metrics.underestimates.labels(tenant, call.model).inc()
    try:
        # Completes even if this request is cancelled meanwhile (the QuotaStore contract); the
        # cancel is handed back after the observation.
        await ctx.quota.settle(reservation, used)
    except asyncio.CancelledError as exc:
        return exc
    except Exception as exc:
        log.error(
            "settling request %s failed: %s (its reservation stays charged)",
            call.request_id,
            type(exc).__name__,
        )
    return None


def _observe(ctx: GatewayContext, call: Call, span: trace.Span, latency: float) -> None:
    """End the span, count the metrics, queue the ledger line. Never awaits."""
    principal = call.principal
    tenant = principal.tenant if principal is not None else ""
    input_tokens = call.input_tokens or 0
    output_tokens = call.output_tokens or 0
    stream = call.stream
    attributes = call.span_attributes
    attributes[t.HTTP_STATUS] = call.status
    if call.finish_reasons:
        attributes[t.FINISH_REASONS] = call.finish_reasons
    if tenant:
        attributes[t.TENANT] = tenant
    if stream:
        attributes[t.STREAM] = True
    if call.input_tokens is not None:
        attributes[t.INPUT_TOKENS] = input_tokens
        attributes[t.OUTPUT_TOKENS] = output_tokens
    if call.error_type is not None:
        attributes[t.ERROR_TYPE] = call.error_type
        span.set_status(Status(StatusCode.ERROR, call.error_type))
    span.set_attributes(attributes)
    span.end()

    metrics = ctx.metrics
    if metrics is not None:
        if call.reservation is None and call.status != 200:
            metrics.reject(tenant, call.model, call.error_type or str(call.status), call.status)
        else:
            series = metrics.series(tenant, call.model)
            metrics.answered(tenant, call.model, call.status).inc()
            series.latency.observe(latency)
            if call.ttft is not None and stream:
                series.ttft.observe(call.ttft)
            if input_tokens:
                series.input_tokens.inc(input_tokens)
            if output_tokens:
                series.output_tokens.inc(output_tokens)

    # Only what was admitted is a ledger line: a refusal (429, 400, ...) is counted in the metrics.
    if principal is not None and call.model != UNKNOWN_MODEL and call.reservation is not None:
        if call.input_tokens is None and call.sent:
            # The model may have run and said nothing: the whole reservation was charged (see
            # `settled_tokens`), and the ledger says so, the prompt's bound as input.
            prompt = min(call.plan.prompt_bound if call.plan is not None else 0, call.reservation.tokens)
            input_tokens, output_tokens = prompt, call.reservation.tokens - prompt
            call.charge = "reservation"
        try:
            ctx.ledger.record(
                UsageRecord(
                    request_id=call.request_id,
                    started_at=call.started,
                    tenant=tenant,
                    subject=principal.subject,
                    model=call.model,
                    endpoint=call.endpoint,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    latency_ms=latency * 1000,
                    ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
                    status=call.status,
                    error_type=call.error_type,
                    stream=stream,
                    charge=call.charge,
                )
            )
        except Exception as exc:
            log.error("ledger refused request %s: %s", call.request_id, type(exc).__name__)


def settled_tokens(call: Call, reservation: Reservation) -> int:
    """What a finished request is charged: its usage where known; where the model may have run
    but said nothing (timeout, broken or unreadable answer, cancelled), everything held for it,
    since no budget may be overshot."""
    if call.input_tokens is None and call.sent:
        return reservation.tokens
    return (call.input_tokens or 0) + (call.output_tokens or 0)
