"""The OpenAI surface: GET /v1/models, POST /v1/chat/completions, /v1/completions, /v1/embeddings.

These are plain ASGI endpoints (no FastAPI validation, no dependency injection, no middleware) to
keep the gateway's own cost per request low. A request goes
`authenticate -> read body -> route -> admit (reserve) -> proxy -> settle -> record`; the body is
parsed once to read the few fields the gateway needs and is passed on byte for byte unless the
gateway has to write into it (a token cap, or `stream_options.include_usage` for a stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from starlette.types import Receive, Scope, Send

from respublica.serving.gateway import jsoncodec
from respublica.serving.gateway.contracts import Rejection
from respublica.serving.gateway.errors import GatewayError, error_body, rate_limit_headers, retry_after
from respublica.serving.gateway.quota.estimate import EstimateError, endpoint_of, reservation_tokens
from respublica.serving.gateway.routes.asgi import (
    ClientGone,
    read_body,
    send_json,
    trace_parent,
    until_disconnect,
)
from respublica.serving.gateway.routes.body import parse_body, positive_int
from respublica.serving.gateway.routes.call import (
    Call,
    GatewayContext,
    authenticate,
    finish,
    int_or_none,
    stream_usage,
)
from respublica.serving.gateway.routing.table import Resolved
from respublica.serving.gateway.streaming import SSETap
from respublica.serving.gateway.telemetry import tracing as t

log = logging.getLogger("respublica.gateway")

MAX_N = 128


class OpenAIEndpoint:
    """One POST endpoint proxied to the model (an ASGI app mounted as a Starlette route)."""

    def __init__(self, ctx: GatewayContext, path: str, operation: str, generates: bool) -> None:
        self.ctx = ctx
        self.path = path
        self.operation = operation
        self.generates = generates  # embeddings produce no tokens and can not stream
        self.estimate = endpoint_of(path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = Call()
        span = self.ctx.tracer.start_span(
            self.operation,
            context=trace_parent(scope),
            kind=SpanKind.CLIENT,
            attributes={t.OPERATION: self.operation, t.PROVIDER: t.PROVIDER_NAME},
        )
        try:
            await self._serve(call, span, scope, receive, send)
        except GatewayError as exc:
            call.status, call.error_type = exc.status, exc.code
            if not call.response_started:
                headers = [*exc.headers, *call.rate_headers, (b"x-request-id", call.request_id.encode())]
                await finish(self.ctx, call, span)
                await send_json(send, exc.status, exc.body(), headers)
            elif call.stream:
                await stream_error(send, exc.body())
        except ClientGone:
            call.status, call.error_type = 499, "client_disconnected"
        except asyncio.CancelledError:
            # Not the client (that is caught in _proxy): the server is shutting down. Recorded as
            # such, and the reservation is charged in `finish` if the model may have run.
            if call.status < 400:
                call.status, call.error_type = 503, "gateway_shutdown"
            raise
        except Exception as exc:
            # Never the message: it may quote the request. The type says enough to look further.
            log.error("request %s failed: %s", call.request_id, type(exc).__name__)
            call.status, call.error_type = 500, type(exc).__name__
            body = error_body("the gateway failed to handle this request", "server_error", "internal_error")
            if not call.response_started:
                await finish(self.ctx, call, span)
                await send_json(send, 500, body, [(b"x-request-id", call.request_id.encode())])
            elif call.stream:
                await stream_error(send, body)
        finally:
            await finish(self.ctx, call, span)

    async def _serve(self, call: Call, span: trace.Span, scope: Scope, receive: Receive, send: Send) -> None:
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
        n = positive_int(doc, "n", MAX_N) or 1
        if self.generates:
            requested = positive_int(doc, "max_tokens")
            if self.operation == "chat":
                requested = positive_int(doc, "max_completion_tokens") or requested
            if requested is None:
                cap = principal.default_max_tokens or ctx.default_max_tokens
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
        if ctx.leases is not None:
            ctx.leases.hold(decision.reservation)
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
        call: Call,
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

        watcher = asyncio.create_task(until_disconnect(receive))
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
            log.warning(
                "request %s: %s broke off the response (%s)",
                call.request_id,
                call.endpoint,
                type(exc).__name__,
            )
            raise GatewayError(
                502, "upstream_broken", f"the model's server broke off the response ({type(exc).__name__})"
            ) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            log.warning("request %s: %s did not answer in time", call.request_id, call.endpoint)
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
        self, call: Call, span: trace.Span, resolved: Resolved, body: bytes
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
            call.sent = True
            try:
                response = await ctx.upstream.post(url + self.path, body, headers, span_context)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Nothing reached the model: the next endpoint may take it.
                call.sent = False
                timed_out = timed_out or isinstance(exc, aiohttp.ConnectionTimeoutError)
                log.warning(
                    "request %s: no connection to %s (%s); trying the next endpoint if any",
                    call.request_id,
                    url,
                    type(exc).__name__,
                )
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

    async def _upstream_error(self, call: Call, response: aiohttp.ClientResponse) -> None:
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
        if status >= 500:
            # The model's message is the client's to read, not the log's: it may quote the request.
            log.warning("request %s: %s answered %d", call.request_id, call.endpoint, status)
        if status >= 500 and status not in (503, 504):
            status = 502
        headers: list[tuple[bytes, bytes]] = []
        if status == 429:
            headers.append(upstream_retry_after(response.headers.get("Retry-After")))
        if status < 500 or status == 503:
            call.input_tokens = call.output_tokens = 0  # refused before it ran: nothing generated
        # Otherwise the model may have worked before failing: `finish` charges the reservation.
        raise GatewayError(
            status, "upstream_error" if status >= 500 else "upstream_rejected", message, headers=headers
        )

    async def _unary(
        self, call: Call, span: trace.Span, response: aiohttp.ClientResponse, send: Send
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
            call.input_tokens = int_or_none(usage.get("prompt_tokens"))
            call.output_tokens = int_or_none(usage.get("completion_tokens"))
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
        await finish(self.ctx, call, span)
        await send_json(send, 200, data, [*call.rate_headers, (b"x-request-id", call.request_id.encode())])

    async def _stream(
        self, call: Call, span: trace.Span, response: aiohttp.ClientResponse, send: Send, strip_usage: bool
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
            stream_usage(call, tap)
            await finish(self.ctx, call, span)
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            stream_usage(call, tap)


UPSTREAM_RETRY_AFTER_S = 1


def upstream_retry_after(value: str | None) -> tuple[bytes, bytes]:
    """The model server's Retry-After when it gave a usable one (seconds), else a default."""
    if value is not None and value.strip().isdigit():
        return (b"retry-after", value.strip().encode())
    return retry_after(UPSTREAM_RETRY_AFTER_S)


async def stream_error(send: Send, body: bytes) -> None:
    """End a stream that broke after it started with an OpenAI-shaped `error` event, so the client
    raises an error instead of taking a cut-off answer for a whole one."""
    with contextlib.suppress(OSError):  # the client may be gone too
        await send(
            {
                "type": "http.response.body",
                "body": b"event: error\ndata: " + body + b"\n\n",
                "more_body": False,
            }
        )


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
