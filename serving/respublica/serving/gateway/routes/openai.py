"""The OpenAI surface: GET /v1/models, POST /v1/chat/completions, /v1/completions, /v1/embeddings.

These are plain ASGI endpoints (no FastAPI validation, no dependency injection, no middleware) to
keep the gateway's own cost per request low. A request goes
`authenticate -> read body -> route -> admit (reserve) -> proxy -> settle -> record`; the body is
parsed once to read the few fields the gateway needs and is passed on byte for byte unless the
gateway has to write into it (a token cap, or `stream_options.include_usage` for a stream).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from starlette.types import Receive, Scope, Send

from respublica.serving.gateway import jsoncodec
from respublica.serving.gateway.contracts import (
    Authenticator,
    AuthError,
    Ledger,
    Limits,
    Principal,
    QuotaStore,
    Rejection,
    Reservation,
    UsageRecord,
)
from respublica.serving.gateway.errors import GatewayError, error_body, rate_limit_headers, retry_after
from respublica.serving.gateway.quota.estimate import EstimateError, endpoint_of, reservation_tokens
from respublica.serving.gateway.routing.balancer import LeastOutstanding
from respublica.serving.gateway.routing.table import Resolved, RouteHolder
from respublica.serving.gateway.streaming import SSETap
from respublica.serving.gateway.telemetry import tracing as t
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics
from respublica.serving.gateway.upstream import UpstreamClient

log = logging.getLogger("respublica.gateway")

JSON = b"application/json"
_UNKNOWN = "_unknown"  # metric label for a model name that is not served: clients choose names freely
MAX_N = 128
_CONTRACT_DEFAULT_CAP = Limits().default_max_tokens


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
    balancer: LeastOutstanding = field(default_factory=LeastOutstanding)
    max_body_bytes: int = 8 * 1024 * 1024
    record_content: bool = False
    # The cap written upstream for a tenant whose limits leave defaultMaxTokens at the contract's default.
    default_max_tokens: int = Limits().default_max_tokens


class _ClientGone(Exception):
    """The client went away before the gateway answered."""


class _Call:
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
        self.model = _UNKNOWN
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
        self.active = False
        self.client_gone = False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _trace_parent(scope: Scope) -> Context | None:
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _TRACE_HEADERS}
    return propagate.extract(carrier) if carrier else None


_TRACE_HEADERS = (b"traceparent", b"tracestate", b"baggage")


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", JSON), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def authenticate(ctx: GatewayContext, scope: Scope) -> Principal:
    try:
        return await ctx.authenticator.authenticate(_header(scope, b"authorization"))
    except AuthError as exc:
        raise GatewayError(exc.status, exc.code, exc.message) from None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError(413, "body_too_large", f"request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, "body_too_large", f"request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _positive_int(doc: dict[str, Any], name: str, upper: int | None = None) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (upper and value > upper):
        bound = f" and at most {upper}" if upper else ""
        raise GatewayError(
            400, "invalid_value", f"'{name}' must be an integer of at least 1{bound}", param=name
        )
    return value


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        doc = jsoncodec.loads(body)
    except ValueError:
        raise GatewayError(400, "invalid_json", "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise GatewayError(400, "invalid_body", "request body must be a JSON object")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "missing_model", "'model' is required and must be a string", param="model")
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise GatewayError(400, "invalid_value", "'stream' must be true or false", param="stream")
    return doc


class OpenAIEndpoint:
    """One POST endpoint proxied to the model (an ASGI app mounted as a Starlette route)."""

    def __init__(self, ctx: GatewayContext, path: str, operation: str, generates: bool) -> None:
        self.ctx = ctx
        self.path = path
        self.operation = operation
        self.generates = generates  # embeddings produce no tokens and can not stream
        self.estimate = endpoint_of(path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = _Call()
        span = self.ctx.tracer.start_span(
            self.operation,
            context=_trace_parent(scope),
            kind=SpanKind.CLIENT,
            attributes={t.OPERATION: self.operation, t.PROVIDER: t.PROVIDER_NAME},
        )
        try:
            await self._serve(call, span, scope, receive, send)
        except GatewayError as exc:
            call.status, call.error_type = exc.status, exc.code
            if not call.response_started:
                headers = [*exc.headers, *call.rate_headers, (b"x-request-id", call.request_id.encode())]
                await self._finish(call, span)
                await send_json(send, exc.status, exc.body(), headers)
        except _ClientGone:
            call.status, call.error_type = 499, "client_disconnected"
        except Exception as exc:
            # Never the message: it may quote the request. The type says enough to look further.
            log.error("request %s failed: %s", call.request_id, type(exc).__name__)
            call.status, call.error_type = 500, type(exc).__name__
            if not call.response_started:
                await self._finish(call, span)
                body = error_body(
                    "the gateway failed to handle this request", "server_error", "internal_error"
                )
                await send_json(send, 500, body, [(b"x-request-id", call.request_id.encode())])
        finally:
            await self._finish(call, span)

    async def _serve(self, call: _Call, span: trace.Span, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = self.ctx
        principal = call.principal = await authenticate(ctx, scope)
        body = await read_body(scope, receive, ctx.max_body_bytes)
        doc = parse_body(body)
        model: str = doc["model"]
        span.update_name(f"{self.operation} {model}")
        span.set_attribute(t.REQUEST_MODEL, model)
        resolved = ctx.routes.table.resolve(model)
        if resolved is None:
            raise GatewayError(404, "model_not_found", f"model '{model}' does not exist", param="model")
        call.model = model
        route = resolved.route
        if not route.allows_tenant(principal.tenant) or not (
            principal.allows_model(model)
            or (resolved.adapter is not None and principal.allows_model(route.name))
        ):
            raise GatewayError(
                403,
                "model_not_allowed",
                f"tenant '{principal.tenant}' may not use model '{model}'",
                param="model",
            )
        if not route.endpoints:
            raise GatewayError(
                503,
                "model_not_ready",
                f"model '{model}' is not ready to serve; try again later",
                param="model",
            )

        rewrite = False
        client_wants_usage = True
        cap = 0
        n = _positive_int(doc, "n", MAX_N) or 1
        if self.generates:
            requested = _positive_int(doc, "max_tokens")
            if self.operation == "chat":
                requested = _positive_int(doc, "max_completion_tokens") or requested
            if requested is None:
                cap = principal.default_max_tokens
                if cap == _CONTRACT_DEFAULT_CAP:
                    cap = ctx.default_max_tokens
                doc["max_tokens"] = cap
                rewrite = True
            else:
                cap = requested
            span.set_attribute(t.REQUEST_MAX_TOKENS, cap)
            if doc.get("stream"):
                call.stream = True
                options = doc.get("stream_options")
                client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
                if not client_wants_usage:
                    doc["stream_options"] = {
                        **(options if isinstance(options, dict) else {}),
                        "include_usage": True,
                    }
                    rewrite = True
        elif doc.get("stream"):
            raise GatewayError(400, "invalid_value", "embeddings can not be streamed", param="stream")
        try:
            # The policy side's bound: prompt tokens from the text's size, plus cap x sequences.
            reserve = reservation_tokens(doc, self.estimate, cap)
        except EstimateError as exc:
            raise GatewayError(400, "invalid_value", exc.message, param=exc.param) from None
        call.prompt_bound = max(0, reserve - cap * n)
        if ctx.record_content:
            content = doc.get("messages") or doc.get("prompt") or doc.get("input")
            span.set_attribute(t.INPUT_MESSAGES, jsoncodec.dumps(content).decode())

        decision = await ctx.quota.admit(principal, reserve)
        if isinstance(decision, Rejection):
            raise self._rejected(decision)
        call.reservation = decision.reservation
        call.rate_headers = rate_limit_headers(decision.headers)

        await self._proxy(
            call,
            span,
            resolved,
            jsoncodec.dumps(doc) if rewrite else body,
            receive,
            send,
            strip_usage=not client_wants_usage,
        )

    def _rejected(self, rejection: Rejection) -> GatewayError:
        headers = [retry_after(rejection.retry_after_s), *rate_limit_headers(rejection.headers)]
        if rejection.reason == "store_unavailable":
            return GatewayError(503, rejection.reason, rejection.message, headers=headers)
        return GatewayError(429, rejection.reason, rejection.message, headers=headers)

    async def _proxy(
        self,
        call: _Call,
        span: trace.Span,
        resolved: Resolved,
        body: bytes,
        receive: Receive,
        send: Send,
        strip_usage: bool,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None

        def on_disconnect(watcher: asyncio.Task[None]) -> None:
            # `active` is set first thing in the try below and cleared first thing in its finally,
            # so a cancel delivered here always lands inside that try.
            if call.active and not watcher.cancelled():
                call.client_gone = True
                task.cancel()

        watcher = asyncio.create_task(_until_disconnect(receive))
        watcher.add_done_callback(on_disconnect)
        response: aiohttp.ClientResponse | None = None
        in_flight = (
            self.ctx.metrics.series(call.principal.tenant, call.model).in_flight
            if (self.ctx.metrics is not None and call.principal is not None)
            else None
        )
        if in_flight is not None:
            in_flight.inc()
        complete = False  # the upstream response was read to its end: its connection can be reused
        try:
            call.active = True
            response = await self._connect(call, span, resolved, body)
            if response.status >= 400:
                await self._upstream_error(call, response)
            elif call.stream:
                await self._stream(call, span, response, send, strip_usage)
                complete = True
            else:
                await self._unary(call, span, response, send)
                complete = True
        except asyncio.CancelledError:
            if not call.client_gone:
                raise
            task.uncancel()
            call.status, call.error_type = 499, "client_disconnected"
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise GatewayError(
                502, "upstream_broken", f"the model's server broke off the response ({type(exc).__name__})"
            ) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise GatewayError(504, "upstream_timeout", "the model did not answer in time") from None
        finally:
            call.active = False
            watcher.cancel()
            if in_flight is not None:
                in_flight.dec()
            if response is not None:
                if complete:
                    response.release()
                else:
                    response.close()  # abort what the model is still doing; never pool a half-read connection
            if call.endpoint:
                self.ctx.balancer.release(call.endpoint)

    async def _connect(
        self, call: _Call, span: trace.Span, resolved: Resolved, body: bytes
    ) -> aiohttp.ClientResponse:
        ctx = self.ctx
        route = resolved.route
        headers = {"Content-Type": "application/json", "X-Request-Id": call.request_id}
        span_context = trace.set_span_in_context(span)
        tried: set[str] = set()
        timed_out = False
        while True:
            url = ctx.balancer.pick(route.endpoints, tried)
            if url is None:
                if timed_out:
                    raise GatewayError(
                        504, "upstream_timeout", f"no endpoint of model '{call.model}' answered in time"
                    )
                raise GatewayError(
                    502, "upstream_unreachable", f"no endpoint of model '{call.model}' is reachable"
                )
            ctx.balancer.acquire(url)
            call.endpoint = url
            try:
                response = await ctx.upstream.post(url + self.path, body, headers, span_context)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Nothing reached the model: the next endpoint may take it.
                timed_out = timed_out or isinstance(exc, aiohttp.ConnectionTimeoutError)
                ctx.balancer.release(url)
                ctx.balancer.mark_down(url)
                call.endpoint = ""
                tried.add(url)
                continue
            ctx.balancer.mark_up(url)
            span.set_attribute(t.SERVER_ADDRESS, response.url.host or "")
            if response.url.port:
                span.set_attribute(t.SERVER_PORT, response.url.port)
            return response

    async def _upstream_error(self, call: _Call, response: aiohttp.ClientResponse) -> None:
        raw = await response.content.read(64 * 1024)
        message = f"the model's server answered {response.status}"
        try:
            doc = jsoncodec.loads(raw)
            detail = doc.get("error", doc) if isinstance(doc, dict) else None
            if isinstance(detail, dict) and isinstance(detail.get("message"), str):
                message = detail["message"]
        except ValueError:
            pass
        status = response.status
        if status >= 500 and status not in (503, 504):
            status = 502
        call.input_tokens = call.output_tokens = 0  # refused: nothing generated
        raise GatewayError(status, "upstream_error" if status >= 500 else "upstream_rejected", message)

    async def _unary(
        self, call: _Call, span: trace.Span, response: aiohttp.ClientResponse, send: Send
    ) -> None:
        data = await response.read()
        call.ttft = time.perf_counter() - call.t0
        try:
            doc = jsoncodec.loads(data)
        except ValueError:
            raise GatewayError(
                502, "upstream_invalid", "the model's server sent a response that is not JSON"
            ) from None
        usage = doc.get("usage") if isinstance(doc, dict) else None
        if isinstance(usage, dict):
            call.input_tokens = _int(usage.get("prompt_tokens"))
            call.output_tokens = _int(usage.get("completion_tokens"))
        if isinstance(doc, dict):
            choices = doc.get("choices")
            if isinstance(choices, list):
                call.finish_reasons = [
                    c["finish_reason"] for c in choices if isinstance(c, dict) and c.get("finish_reason")
                ]
                if self.ctx.record_content:
                    span.set_attribute(t.OUTPUT_MESSAGES, jsoncodec.dumps(choices).decode())
            if isinstance(doc.get("model"), str):
                span.set_attribute(t.RESPONSE_MODEL, doc["model"])
            if isinstance(doc.get("id"), str):
                span.set_attribute(t.RESPONSE_ID, doc["id"])
        call.active = False  # from here on the client's "disconnect" is the end of the response
        call.response_started = True
        # Settled before the answer leaves, so the caller's next request sees its spend.
        await self._finish(call, span)
        await send_json(send, 200, data, [*call.rate_headers, (b"x-request-id", call.request_id.encode())])

    async def _stream(
        self, call: _Call, span: trace.Span, response: aiohttp.ClientResponse, send: Send, strip_usage: bool
    ) -> None:
        tap = SSETap(strip_usage_chunk=strip_usage)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                        *call.rate_headers,
                        (b"x-request-id", call.request_id.encode()),
                    ],
                }
            )
            call.response_started = True
            async for data in response.content.iter_any():
                out = tap.feed(data)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            tail = tap.flush()
            call.active = False
            _stream_usage(call, tap)
            await self._finish(call, span)
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            _stream_usage(call, tap)

    async def _finish(self, call: _Call, span: trace.Span) -> None:
        """Settle, measure, trace and record, once per request."""
        if call.finished:
            return
        call.finished = True
        ctx = self.ctx
        principal = call.principal
        tenant = principal.tenant if principal is not None else ""
        latency = time.perf_counter() - call.t0
        input_tokens = call.input_tokens or 0
        output_tokens = call.output_tokens or 0
        if call.reservation is not None:
            used = input_tokens + output_tokens
            if call.status == 499 and call.input_tokens is None:
                used = call.reservation.tokens  # left before any answer: what was held may have run
            try:
                await asyncio.shield(ctx.quota.settle(call.reservation, used))
            except Exception as exc:
                log.error(
                    "settling request %s failed: %s (its lease will expire)",
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

        if principal is not None and call.model != _UNKNOWN:
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


def _stream_usage(call: _Call, tap: SSETap) -> None:
    if tap.first_chunk_at is not None:
        call.ttft = tap.first_chunk_at - call.t0
    call.finish_reasons = tap.finish_reasons
    if tap.usage is not None:
        call.input_tokens = _int(tap.usage.get("prompt_tokens"))
        call.output_tokens = _int(tap.usage.get("completion_tokens"))
    else:
        # No usage (the client left, or the model broke off): charge the prompt's upper bound and
        # one token per chunk seen, the engine's unit of streaming.
        call.input_tokens = call.prompt_bound
        call.output_tokens = tap.chunks


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class ModelsEndpoint:
    """GET /v1/models: the models this caller may use and that can serve now."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            principal = await authenticate(self.ctx, scope)
        except GatewayError as exc:
            await send_json(send, exc.status, exc.body(), [])
            return
        data = [
            {"id": name, "object": "model", "created": int(route.created), "owned_by": "respublica"}
            for name, route in self.ctx.routes.table.model_names()
            if route.endpoints
            and route.allows_tenant(principal.tenant)
            and (principal.allows_model(name) or principal.allows_model(route.name))
        ]
        await send_json(send, 200, jsoncodec.dumps({"object": "list", "data": data}), [])
