"""One request's record, and what happens once it is over: settle the reservation, end the span,
count the metrics, write the ledger line. Shared by the endpoints through `GatewayContext`."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

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
from respublica.serving.gateway.quota.keeper import LeaseKeeper
from respublica.serving.gateway.routes.asgi import header
from respublica.serving.gateway.routing.balancer import LeastOutstanding
from respublica.serving.gateway.routing.table import RouteHolder
from respublica.serving.gateway.streaming import SSETap
from respublica.serving.gateway.telemetry import tracing as t
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics
from respublica.serving.gateway.upstream import UpstreamClient

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
    record_content: bool = False
    # The cap written upstream where neither the client nor its key or tenant set one.
    default_max_tokens: int = 1024


class Call:
    """What one request did, for the span, the metrics, the settlement and the ledger."""

    __slots__ = (
        "active",
        "client_gone",
        "endpoint",
        "error_type",
        "finish_reasons",
        "finished",
        "input_tokens",
        "model",
        "output_tokens",
        "principal",
        "prompt_bound",
        "rate_headers",
        "request_id",
        "reservation",
        "response_started",
        "sent",
        "started",
        "status",
        "stream",
        "t0",
        "ttft",
    )

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.started = time.time()
        self.request_id = uuid.uuid4().hex
        self.principal: Principal | None = None
        self.model = UNKNOWN_MODEL
        self.status = 200
        self.error_type: str | None = None
        self.finish_reasons: list[str] = []
        self.finished = False
        self.reservation: Reservation | None = None
        self.rate_headers: list[tuple[bytes, bytes]] = []
        self.prompt_bound = 0
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.ttft: float | None = None
        self.endpoint = ""
        self.stream = False
        self.response_started = False
        self.sent = False  # the body may have reached the model: it may have generated
        self.active = False
        self.client_gone = False


async def authenticate(ctx: GatewayContext, scope: Scope) -> Principal:
    try:
        return await ctx.authenticator.authenticate(header(scope, b"authorization"))
    except AuthError as exc:
        raise GatewayError(exc.status, exc.code, exc.message) from None


async def finish(ctx: GatewayContext, call: Call, span: trace.Span) -> None:
    """Settle, measure, trace and record, once per request."""
    if call.finished:
        return
    call.finished = True
    principal = call.principal
    tenant = principal.tenant if principal is not None else ""
    latency = time.perf_counter() - call.t0
    input_tokens = call.input_tokens or 0
    output_tokens = call.output_tokens or 0
    cancelled: asyncio.CancelledError | None = None
    if call.reservation is not None:
        if ctx.leases is not None:
            ctx.leases.release(call.reservation)
        used = settled_tokens(call, call.reservation)
        if used > call.reservation.tokens:
            # The prompt bound was too low: the actual usage is charged all the same, and this
            # makes the estimator's miss visible. Counts only, never content.
            log.warning(
                "request %s used %d tokens, more than the %d reserved (model %s)",
                call.request_id,
                used,
                call.reservation.tokens,
                call.model,
            )
            if ctx.metrics is not None:
                ctx.metrics.underestimates.labels(tenant, call.model).inc()
        try:
            await asyncio.shield(ctx.quota.settle(call.reservation, used))
        except asyncio.CancelledError as exc:
            # Shutdown cancelled the request while it settled: the shielded settlement goes on,
            # and this request is still traced, counted and written to the ledger (no await
            # follows) before the cancellation goes on.
            cancelled = exc
        except Exception as exc:
            log.error(
                "settling request %s failed: %s (its reservation stays charged)",
                call.request_id,
                type(exc).__name__,
            )
    attributes: dict[str, Any] = {t.HTTP_STATUS: call.status}
    if call.finish_reasons:
        attributes[t.FINISH_REASONS] = call.finish_reasons
    if tenant:
        attributes[t.TENANT] = tenant
    if call.stream:
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
            metrics.requests.labels(tenant, call.model, str(call.status)).inc()
            series.latency.observe(latency)
            if call.ttft is not None and call.stream:
                series.ttft.observe(call.ttft)
            if input_tokens:
                series.input_tokens.inc(input_tokens)
            if output_tokens:
                series.output_tokens.inc(output_tokens)

    if principal is not None and call.model != UNKNOWN_MODEL:
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
                    stream=call.stream,
                )
            )
        except Exception as exc:
            log.error("ledger refused request %s: %s", call.request_id, type(exc).__name__)
    if cancelled is not None:
        raise cancelled


def settled_tokens(call: Call, reservation: Reservation) -> int:
    """What a finished request is charged: its usage where known; where the model may have run
    but said nothing (timeout, broken or unreadable answer, cancelled), everything held for it,
    since no budget may be overshot."""
    if call.input_tokens is None and call.sent:
        return reservation.tokens
    return (call.input_tokens or 0) + (call.output_tokens or 0)


def stream_usage(call: Call, tap: SSETap) -> None:
    if tap.first_chunk_at is not None:
        call.ttft = tap.first_chunk_at - call.t0
    call.finish_reasons = tap.finish_reasons
    if tap.usage is not None:
        call.input_tokens = int_or_none(tap.usage.get("prompt_tokens"))
        call.output_tokens = int_or_none(tap.usage.get("completion_tokens"))
    else:
        # No usage (the client left, or the model broke off): charge the prompt's upper bound and
        # an upper bound of what was streamed, never more than was reserved for the output.
        call.input_tokens = call.prompt_bound
        output = tap.output_bound()
        if call.reservation is not None:
            output = min(output, max(call.reservation.tokens - call.prompt_bound, 0))
        call.output_tokens = output


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
