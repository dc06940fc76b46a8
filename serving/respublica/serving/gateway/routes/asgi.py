"""The ASGI edges of the request path: headers, the body, JSON answers, the client leaving."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry import propagate
from opentelemetry.context import Context
from starlette.types import Receive, Scope, Send

from respublica.serving.gateway.errors import GatewayError, retry_after

JSON = b"application/json"
_TRACE_HEADERS = (b"traceparent", b"tracestate", b"baggage")  # W3C trace context and baggage


class ClientGone(Exception):
    """The client went away before the gateway answered."""


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def trace_parent(scope: Scope) -> Context | None:
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _TRACE_HEADERS}
    return propagate.extract(carrier) if carrier else None


async def send_json(send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", JSON), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class BodyBudget:
    """The body bytes this process is reading at once, at most `limit` (503 `server_busy` beyond).

    Bodies are read before admission (the model and the token bound are in them), so the
    concurrency limit can not bound their memory: 16 clients sending 8 MB each cost 128 MB however
    few of them will be admitted. A request reserves its Content-Length before the first read (or,
    without one, each chunk as it arrives); where the budget is full it waits up to `wait_s` for
    others to finish, then is refused with Retry-After. The reservation ends when `read_body`
    returns: the route parses the body right after, with no await in between, so no other read
    runs until the parse is done."""

    limit: int
    wait_s: float = 1.0
    in_flight: int = 0
    peak: int = 0  # the most ever reserved at once: what the tests check
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    async def acquire(self, size: int) -> None:
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while self.in_flight + size > self.limit:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or size > self.limit:
                raise GatewayError(
                    503,
                    "server_busy",
                    "the gateway is receiving too many request bodies at once; retry shortly",
                    headers=[retry_after(self.wait_s)],
                )
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), left)
            except TimeoutError:
                pass
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight += size
        self.peak = max(self.peak, self.in_flight)

    def release(self, size: int) -> None:
        self.in_flight -= size
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:  # each rechecks; the ones that still do not fit wait again
            if not waiter.done():
                waiter.set_result(None)


DEFAULT_BODY_BYTES_IN_FLIGHT = 64 * 1024 * 1024
_process_budget = BodyBudget(DEFAULT_BODY_BYTES_IN_FLIGHT)


def body_budget() -> BodyBudget:
    """This process's budget: one per process, as the memory it protects is."""
    return _process_budget


def configure_body_budget(limit: int, wait_s: float = 1.0) -> BodyBudget:
    """Replace the process's budget (at app creation, from `body_bytes_in_flight`)."""
    global _process_budget
    _process_budget = BodyBudget(limit, wait_s)
    return _process_budget


async def read_body(
    scope: Scope, receive: Receive, limit: int, timeout_s: float = 30.0, budget: BodyBudget | None = None
) -> bytes:
    """The whole request body, at most `limit` bytes (413) received within `timeout_s` (408), while
    the process's body budget allows (503 `server_busy`, see `BodyBudget`).

    The deadline covers the whole body, not each read: uvicorn's own `timeout_keep_alive` does not
    apply once a request has started, so a client sending one byte a second would otherwise keep
    its connection, its buffer and a task forever."""
    reading = _Reading(budget or _process_budget)
    try:
        async with asyncio.timeout(timeout_s):
            try:
                return await _read_body(scope, receive, limit, reading)
            except GatewayError as e:
                if e.code == "server_busy":
                    reading.release()
                    # Read the rest and drop it (uvicorn buffers at most 64 KiB of it): closing on
                    # unread bytes sends a reset, and the client would lose the 503 with it.
                    await until_body_end(receive)
                raise
    except TimeoutError:
        raise GatewayError(
            408, "body_timeout", f"the request body did not arrive within {timeout_s:g} seconds"
        ) from None
    finally:
        reading.release()


@dataclass
class _Reading:
    """One body's share of the budget: what it reserved, given back once whatever happens."""

    budget: BodyBudget
    held: int = 0

    async def grow(self, to: int) -> None:
        if to > self.held:
            await self.budget.acquire(to - self.held)
            self.held = to

    def release(self) -> None:
        if self.held:
            self.budget.release(self.held)
            self.held = 0


async def _read_body(scope: Scope, receive: Receive, limit: int, reading: _Reading) -> bytes:
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise GatewayError(413, "body_too_large", f"request body is larger than {limit} bytes")
        await reading.grow(int(declared))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, "body_too_large", f"request body is larger than {limit} bytes")
        await reading.grow(size)  # no Content-Length (chunked): reserve as the bytes come
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def until_body_end(receive: Receive) -> None:
    """Receive and drop the rest of a request body."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


async def until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
