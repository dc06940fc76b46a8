"""The OpenAI surface: GET /v1/models, POST /v1/chat/completions, /v1/completions, /v1/embeddings.

These are plain ASGI endpoints (no FastAPI validation, no dependency injection, no middleware) to
keep the gateway's own cost per request low. A request goes, each step once:
`authenticate -> read and parse the body -> resolve the route -> plan (routes/plan.py: access, cap,
body, reservation size; pure) -> admit (reserve) -> proxy -> settle -> observe (routes/call.py)`,
then the last word (the answer, or the end of a stream) goes to the client. The body is parsed
once to read the few fields the gateway needs and is passed on byte for byte unless the plan
writes into it (a token cap, or `stream_options.include_usage` for a stream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, NoReturn

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from starlette.types import Receive, Scope, Send

from respublica.serving.gateway import jsoncodec
from respublica.serving.gateway.contracts import Rejection
from respublica.serving.gateway.errors import GatewayError, error_body, rate_limit_headers, retry_after
from respublica.serving.gateway.quota.arithmetic import MAX_REPORTED_TOKENS
from respublica.serving.gateway.quota.estimate import endpoint_of
from respublica.serving.gateway.routes.asgi import (
    ClientGone,
    read_body,
    send_json,
    trace_parent,
    until_disconnect,
)
from respublica.serving.gateway.routes.body import parse_body
from respublica.serving.gateway.routes.call import Call, GatewayContext, authenticate, settle_and_observe
from respublica.serving.gateway.routes.plan import Plan, may_use, plan_request
from respublica.serving.gateway.routes.upstream_message import client_message
from respublica.serving.gateway.streaming import SSETap
from respublica.serving.gateway.telemetry import tracing as t
from respublica.serving.gateway.upstream import read_bounded

log = logging.getLogger("respublica.gateway")

# What a request still running when the server's grace period ends is told (uvicorn's
# `Server.shutdown` cancels it then), and how long writing that may take.
SHUTDOWN_BODY = error_body("the gateway is shutting down; retry the request", "server_error", "shutting_down")
SHUTDOWN_RETRY_AFTER_S = 1
SHUTDOWN_WRITE_TIMEOUT_S = 1.0
# How long shutdown waits for the requests it cancelled to settle, be recorded and say their last
# word (the write above, an fsync and a database line) before it closes what they need.
SHUTDOWN_SETTLE_S = 5.0


class LastWord(NamedTuple):
    """What the client is sent once its request is settled and recorded, so that its next request
    sees the spend: a whole JSON answer (`status` set), or the bytes that end a stream already
    started (`status` 0)."""

    body: bytes
    status: int = 0
    headers: Sequence[tuple[bytes, bytes]] = ()


class OpenAIEndpoint:
    """One POST endpoint proxied to the model (an ASGI app mounted as a Starlette route)."""

    def __init__(self, ctx: GatewayContext, path: str, operation: str, generates: bool) -> None:
        self.ctx = ctx
        self.path = path
        self.operation = operation
        self.generates = generates  # embeddings produce no tokens and can not stream
        self.estimate = endpoint_of(path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        running = self.ctx.running
        running.enter()  # shutdown closes the ledger and the stores only after this call is over
        try:
            await self._serve(scope, receive, send)
        finally:
            running.leave()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """plan -> admit -> proxy -> settle -> observe, each once; then the last word to the client."""
        call = Call()
        span = self.ctx.tracer.start_span(
            self.operation,
            context=trace_parent(scope),
            kind=SpanKind.CLIENT,
            attributes={t.OPERATION: self.operation, t.PROVIDER: t.PROVIDER_NAME},
        )
        last: LastWord | None = None
        cut: asyncio.CancelledError | None = None
        try:
            try:
                plan = await self._plan(call, span, scope, receive)
                if self.ctx.fairness is not None:  # a saturated model: wait for its turn (fairness/)
                    call.slot = await self.ctx.fairness.acquire(call.principal, plan, receive)
                await self._admit(call, plan)
                last = await self._proxy(call, span, plan, receive, send)
            except GatewayError as exc:
                # The operator's reason (a hidden model is "model_not_allowed"), not the client's code.
                call.status, call.error_type = exc.status, getattr(exc, "reason", exc.code)
                last = self._error(call, exc.body(), exc.headers)
            except ClientGone:
                call.status, call.error_type = 499, "client_disconnected"
            except asyncio.CancelledError as exc:
                # Not the client (that is caught in _proxy): the server is shutting down (uvicorn
                # cancels what still runs when its grace period ends). Recorded as such, and the
                # reservation is charged in the settlement if the model may have run; the client is
                # told (a stream gets an `error` event, not a silent cut), then the cancel goes on.
                if call.status < 400:
                    call.status, call.error_type = 503, "gateway_shutdown"
                cut = exc
                last = self._error(call, SHUTDOWN_BODY, [retry_after(SHUTDOWN_RETRY_AFTER_S)])
            except Exception as exc:
                # Never the message: it may quote the request. The type says enough to look further.
                log.error("request %s failed: %s", call.request_id, type(exc).__name__)
                call.status, call.error_type = 500, type(exc).__name__
                body = error_body(
                    "the gateway failed to handle this request", "server_error", "internal_error"
                )
                last = self._error(call, body, ())
        finally:
            # The one place a request ends, however it went (a shutdown's cancellation included).
            if call.slot is not None:
                call.slot.release(call.input_tokens, call.output_tokens)
            await settle_and_observe(self.ctx, call, span)
        if cut is not None:
            # Bounded: a client that does not read can not hold the shutdown up.
            if last is not None:
                await self._say(call, send, last, SHUTDOWN_WRITE_TIMEOUT_S)
            raise cut
        if last is not None:
            await self._say(call, send, last)

    def _error(self, call: Call, body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> LastWord:
        if call.response_started:
            # A stream broke after it started: an OpenAI-shaped `error` event ends it, so the client
            # raises an error instead of taking a cut-off answer for a whole one.
            return LastWord(b"event: error\ndata: " + body + b"\n\n")
        return LastWord(
            body, call.status, [*headers, *call.rate_headers, (b"x-request-id", call.request_id.encode())]
        )

    async def _say(self, call: Call, send: Send, last: LastWord, timeout_s: float | None = None) -> None:
        try:
            if timeout_s is None:  # the usual case: no timeout context to enter and leave
                await self._write(send, last)
            else:
                async with asyncio.timeout(timeout_s):
                    await self._write(send, last)
        except TimeoutError:  # before OSError, whose subclass it is
            log.warning("request %s: the client did not take its last word in time", call.request_id)
        except OSError:
            pass  # the client is gone; the request is settled and recorded already
        except Exception as exc:
            log.error("request %s failed: %s", call.request_id, type(exc).__name__)

    @staticmethod
    async def _write(send: Send, last: LastWord) -> None:
        if last.status:
            await send_json(send, last.status, last.body, last.headers)
        else:
            await send({"type": "http.response.body", "body": last.body, "more_body": False})

    async def _plan(self, call: Call, span: trace.Span, scope: Scope, receive: Receive) -> Plan:
        """Who is calling and what they ask for: authenticate, read the body, resolve the route,
        then the pure plan (routes/plan.py); its refusal is raised as the answer."""
        ctx = self.ctx
        principal = call.principal = await authenticate(ctx, scope)
        raw = await read_body(scope, receive, ctx.max_body_bytes, ctx.body_timeout_s)
        doc = parse_body(raw)
        model: str = doc["model"]
        resolved = ctx.routes.table.resolve(model)
        if resolved is not None:
            call.model = model  # a metric label, span name and attribute only once it names a served model
            span.update_name(f"{self.operation} {model}")
            call.span_attributes[t.REQUEST_MODEL] = model
        plan = plan_request(doc, raw, self.estimate, principal, resolved, ctx.default_max_tokens)
        if isinstance(plan, GatewayError):
            raise plan
        call.plan = plan
        if self.generates:
            call.span_attributes[t.REQUEST_MAX_TOKENS] = plan.cap
        if ctx.record_content:
            content = doc.get("messages") or doc.get("prompt") or doc.get("input")
            span.set_attribute(t.INPUT_MESSAGES, jsoncodec.dumps(content).decode())
        return plan

    async def _admit(self, call: Call, plan: Plan) -> None:
        """Reserve the plan's tokens and a concurrency slot; a rejection is raised as 429 (or 503)."""
        ctx = self.ctx
        assert call.principal is not None  # set by `_plan`
        decision = await ctx.quota.admit(call.principal, plan.reserve)
        if isinstance(decision, Rejection):
            raise self._rejected(decision)
        call.reservation = decision.reservation
        if ctx.leases is not None:
            ctx.leases.hold(decision.reservation)
        call.rate_headers = rate_limit_headers(decision.headers)

    def _rejected(self, rejection: Rejection) -> GatewayError:
        headers = [retry_after(rejection.retry_after_s), *rate_limit_headers(rejection.headers)]
        if rejection.reason == "store_unavailable":
            return GatewayError(503, rejection.reason, rejection.message, headers=headers)
        return GatewayError(429, rejection.reason, rejection.message, headers=headers)

    async def _proxy(
        self, call: Call, span: trace.Span, plan: Plan, receive: Receive, send: Send
    ) -> LastWord | None:
        """Send the body to the model and pass its answer on; the last word is returned, not sent."""
        task = asyncio.current_task()
        assert task is not None
        # `active` is set first thing in the try below and cleared first thing in its finally, so a
        # cancel for the client's leaving always lands inside that try; after it, the client's
        # "disconnect" is the end of the response.
        active = False
        gone = False

        def on_disconnect(watcher: asyncio.Task[None]) -> None:
            nonlocal gone
            if active and not watcher.cancelled():
                gone = True
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
            active = True
            response = await self._connect(call, span, plan)
            if response.status >= 300:  # a redirect is not followed (upstream.py): an error too
                await self._upstream_error(call, response)
            if plan.stream:
                last = await self._stream(call, span, response, send, plan.strip_usage)
            else:
                last = await self._unary(call, span, response)
            complete = True
            return last
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
            call.status, call.error_type = 499, "client_disconnected"
            return None
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
            active = False
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

    async def _connect(self, call: Call, span: trace.Span, plan: Plan) -> aiohttp.ClientResponse:
        ctx = self.ctx
        route = plan.route
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
            call.endpoint = url  # from here the model may have the body
            try:
                response = await ctx.upstream.post(
                    url + self.path, plan.body, headers, span_context, route.wake_timeout_s
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Nothing reached the model: the next endpoint may take it.
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
            call.span_attributes[t.SERVER_ADDRESS] = response.url.host or ""
            if response.url.port:
                call.span_attributes[t.SERVER_PORT] = response.url.port
            return response

    async def _upstream_error(self, call: Call, response: aiohttp.ClientResponse) -> NoReturn:
        raw = await response.content.read(64 * 1024)
        message = f"the model's server answered {response.status}"
        try:
            doc = jsoncodec.loads(raw)
            detail = doc.get("error", doc) if isinstance(doc, dict) else None
            if isinstance(detail, dict) and isinstance(detail.get("message"), str):
                # The server's words only: its exception paths and tracebacks name its code.
                message = client_message(detail["message"], response.status)
        except ValueError:
            pass
        status = response.status
        if status < 400:
            # A model server never redirects: nothing ran, and the client is not sent elsewhere.
            log.warning("request %s: %s answered a redirect (%d)", call.request_id, call.endpoint, status)
            call.input_tokens = call.output_tokens = 0
            raise GatewayError(502, "upstream_error", f"the model's server answered a redirect ({status})")
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
        # Otherwise the model may have worked before failing: the settlement charges the reservation.
        raise GatewayError(
            status, "upstream_error" if status >= 500 else "upstream_rejected", message, headers=headers
        )

    async def _unary(self, call: Call, span: trace.Span, response: aiohttp.ClientResponse) -> LastWord:
        data = await read_bounded(response, self.ctx.upstream.settings.max_response_bytes)
        call.ttft = time.perf_counter() - call.t0
        try:
            doc = jsoncodec.loads(data)
        except ValueError:
            raise GatewayError(
                502, "upstream_invalid", "the model's server sent a response that is not JSON"
            ) from None
        usage = doc.get("usage") if isinstance(doc, dict) else None
        counts = usage_counts(usage)
        if counts is not None:  # else: no believable count, the reservation is charged
            call.input_tokens, call.output_tokens = counts
        if isinstance(doc, dict):
            choices = doc.get("choices")
            if isinstance(choices, list):
                call.finish_reasons = [
                    c["finish_reason"] for c in choices if isinstance(c, dict) and c.get("finish_reason")
                ]
                if self.ctx.record_content:
                    span.set_attribute(t.OUTPUT_MESSAGES, jsoncodec.dumps(choices).decode())
            if isinstance(doc.get("model"), str):
                call.span_attributes[t.RESPONSE_MODEL] = doc["model"]
            if isinstance(doc.get("id"), str):
                call.span_attributes[t.RESPONSE_ID] = doc["id"]
        # Sent only once settled, so the caller's next request sees its spend.
        return LastWord(data, 200, [*call.rate_headers, (b"x-request-id", call.request_id.encode())])

    async def _stream(
        self, call: Call, span: trace.Span, response: aiohttp.ClientResponse, send: Send, strip_usage: bool
    ) -> LastWord:
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
                if call.slot is not None:
                    call.slot.progress(tap.chunks)  # output counted into fair sharing every N events
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            # The tail (an event without its blank line) ends the stream once it is settled.
            return LastWord(tap.flush())
        finally:
            # Once, however the stream ended (whole, broken off, the client gone).
            self._stream_usage(call, tap)

    @staticmethod
    def _stream_usage(call: Call, tap: SSETap) -> None:
        if tap.first_chunk_at is not None:
            call.ttft = tap.first_chunk_at - call.t0
        call.finish_reasons = tap.finish_reasons
        counts = usage_counts(tap.usage)
        if counts is not None:
            call.input_tokens, call.output_tokens = counts
            return
        # No usage (the client left, or the model broke off): charge the prompt's upper bound and
        # an upper bound of what was streamed, never more than was reserved for the output.
        call.charge = "bound"
        prompt_bound = call.plan.prompt_bound if call.plan is not None else 0
        output = tap.output_bound()
        if call.reservation is not None:
            output = min(output, max(call.reservation.tokens - prompt_bound, 0))
        call.input_tokens, call.output_tokens = prompt_bound, output


UPSTREAM_RETRY_AFTER_S = 1


def upstream_retry_after(value: str | None) -> tuple[bytes, bytes]:
    """The model server's Retry-After when it gave a usable one (seconds), else a default."""
    if value is not None and value.strip().isdigit():
        return (b"retry-after", value.strip().encode())
    return retry_after(UPSTREAM_RETRY_AFTER_S)


def usage_counts(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens of a usage object, or None unless both are believable counts
    (embeddings report no completion tokens: none is 0)."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = (
        int_or_none(usage.get("prompt_tokens")),
        int_or_none(usage.get("completion_tokens", 0)),
    )
    return None if prompt is None or completion is None else (prompt, completion)


def int_or_none(value: Any) -> int | None:
    """A token count the model reported, or None where it is no count (negative, absurdly large,
    not an integer): the settlement then charges the reservation, as for a missing report."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_REPORTED_TOKENS:
        return value
    return None


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
            if route.endpoints and may_use(principal, name, route)
        ]
        await send_json(send, 200, jsoncodec.dumps({"object": "list", "data": data}), [])
