"""The ASGI edges of the request path: headers, the body, JSON answers, the client leaving."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from opentelemetry import propagate
from opentelemetry.context import Context
from starlette.types import Receive, Scope, Send

from respublica.serving.gateway.errors import GatewayError

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


async def read_body(scope: Scope, receive: Receive, limit: int, timeout_s: float = 30.0) -> bytes:
    """The whole request body, at most `limit` bytes (413) received within `timeout_s` (408).

    The deadline covers the whole body, not each read: uvicorn's own `timeout_keep_alive` does not
    apply once a request has started, so a client sending one byte a second would otherwise keep
    its connection, its buffer and a task forever."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(scope, receive, limit)
    except TimeoutError:
        raise GatewayError(
            408, "body_timeout", f"the request body did not arrive within {timeout_s:g} seconds"
        ) from None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError(413, "body_too_large", f"request body is larger than {limit} bytes")
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
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
