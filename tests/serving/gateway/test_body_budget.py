"""Bodies are read before admission, so the process bounds the body bytes it reads at once
(`body_bytes_in_flight`): beyond, a request waits briefly, then gets 503 `server_busy` with
Retry-After (issue 11, bounded inputs). Real gateway, real concurrent raw-socket clients on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from helpers.gateway_harness import ALPHA_KEY
from respublica.serving.gateway.errors import GatewayError
from respublica.serving.gateway.routes import asgi
from respublica.serving.gateway.routes.asgi import BodyBudget, configure_body_budget, read_body
from respublica.serving.gateway.settings import GatewaySettings

BUDGET = 1024 * 1024
PAD = 300 * 1024  # three bodies fit in the budget at once, a fourth does not


@pytest.fixture
def small_budget() -> Iterator[BodyBudget]:
    before = asgi.body_budget()
    budget = configure_body_budget(BUDGET, wait_s=0.3)
    yield budget
    asgi._process_budget = before


def _body(i: int) -> bytes:
    doc = {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}], "metadata": {"pad": "x" * PAD}}
    return json.dumps(doc).encode()


def _client(url: str, i: int, out: dict[int, tuple[int, dict[str, str], dict[str, Any]]]) -> None:
    parts = urlsplit(url)
    body = _body(i)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=20) as sock:
        sock.sendall(
            (
                "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
                f"Authorization: Bearer {ALPHA_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        step = len(body) // 8 + 1
        for start in range(0, len(body), step):  # a body takes ~0.8 s, longer than the budget's wait
            sock.sendall(body[start : start + step])
            time.sleep(0.1)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            headers = _headers(head)
            if rest and len(rest) >= int(headers.get("content-length", "0")):
                break
    head, _, rest = data.partition(b"\r\n\r\n")
    headers = _headers(head)
    out[i] = (int(head.split()[1]), headers, json.loads(rest[: int(headers["content-length"])]))


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_concurrent_bodies_never_exceed_the_budget_and_none_is_lost(
    make_stack: Any, small_budget: BodyBudget
) -> None:
    stack = make_stack()
    out: dict[int, tuple[int, dict[str, str], dict[str, Any]]] = {}
    threads = [threading.Thread(target=_client, args=(stack.url, i, out)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(out) == list(range(16)), "a client got no answer"
    statuses = [status for status, _, _ in out.values()]
    assert set(statuses) <= {200, 503}, statuses
    for status, headers, doc in out.values():
        if status == 503:
            assert doc["error"]["code"] == "server_busy" and doc["error"]["type"] == "service_unavailable"
            assert int(headers["retry-after"]) >= 1
        else:
            assert doc["choices"]
    # The budget was used to the full (three bodies at once) and never beyond.
    assert 3 * len(_body(0)) <= small_budget.peak <= BUDGET
    assert statuses.count(200) >= 3 and statuses.count(503) >= 1, statuses
    assert small_budget.in_flight == 0
    assert len(stack.upstream.seen) == statuses.count(200)


def _receiver(chunks: list[bytes], gate: asyncio.Event | None = None) -> Any:
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        if gate is not None and len(messages) == 1:
            await gate.wait()  # hold the last chunk: the body stays in flight
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def _scope(length: int | None) -> dict[str, Any]:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return {"type": "http", "headers": headers}


async def test_a_chunked_body_reserves_as_it_arrives_and_releases_at_the_end() -> None:
    budget = BodyBudget(1000, wait_s=0.05)
    gate = asyncio.Event()
    first = asyncio.create_task(
        read_body(_scope(None), _receiver([b"a" * 400, b"b" * 400], gate), 10_000, 5, budget)
    )
    await asyncio.sleep(0.01)
    assert budget.in_flight == 400  # only what came so far
    with pytest.raises(GatewayError) as e:  # 400 + 700 > 1000, and nothing is released in time
        await read_body(_scope(700), _receiver([b"c" * 700]), 10_000, 5, budget)
    assert e.value.status == 503 and e.value.code == "server_busy"
    assert dict(e.value.headers)[b"retry-after"] == b"1"
    gate.set()
    assert await first == b"a" * 400 + b"b" * 400
    assert budget.in_flight == 0 and budget.peak == 800


async def test_a_waiting_body_is_read_once_another_finishes() -> None:
    budget = BodyBudget(1000, wait_s=2)
    gate = asyncio.Event()
    first = asyncio.create_task(read_body(_scope(800), _receiver([b"a" * 800], gate), 10_000, 5, budget))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(read_body(_scope(500), _receiver([b"b" * 500]), 10_000, 5, budget))
    await asyncio.sleep(0.05)
    assert not second.done() and budget.in_flight == 800
    gate.set()
    assert await first == b"a" * 800 and await second == b"b" * 500
    assert budget.peak == 800 and budget.in_flight == 0


@pytest.mark.parametrize(
    ("chunks", "length", "status"),
    [([b"x" * 50], 5000, 413), ([b"x" * 50], None, None)],  # too large; the client leaves
)
async def test_the_reservation_is_given_back_on_every_error(
    chunks: list[bytes], length: int | None, status: int | None
) -> None:
    budget = BodyBudget(10_000, wait_s=0.05)
    receive = _receiver(chunks)
    if status is None:
        receive = _receiver([])  # a disconnect only
    with pytest.raises((GatewayError, asgi.ClientGone)):
        await read_body(_scope(length), receive, 1000, 5, budget)
    assert budget.in_flight == 0


def test_the_setting_is_bounded_and_fits_the_largest_body() -> None:
    assert GatewaySettings().body_bytes_in_flight == 64 * 1024 * 1024
    with pytest.raises(ValidationError, match="at least max_body_bytes"):
        GatewaySettings(max_body_bytes=8 * 1024 * 1024, body_bytes_in_flight=4 * 1024 * 1024)
    with pytest.raises(ValidationError):
        GatewaySettings(body_bytes_in_flight=10)
