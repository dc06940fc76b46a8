"""The load generator: raw asyncio HTTP/1.1 keep-alive connections, requests encoded once.

Closed loop (`concurrency`): that many connections, each sends its next request when the last one
ended: throughput at a fixed number in flight. Open loop (`rate`): requests start on a fixed
schedule whatever the server does, on idle connections (new ones when none is idle); latency
counts from the scheduled start, so a server that falls behind shows it (no coordinated omission).

Per request: latency (to the last byte), time to first token (to the first body byte: for a stream
the first SSE event), and errors: a status other than 200, a stream without `data: [DONE]`, a reset
connection, a timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from http11 import Parser

TIMEOUT_S = 30.0
# A target far behind an open loop is not flooded with thousands of connections (its backlog would
# spill into the next window): past this many in flight, a scheduled request counts as an error.
MAX_OPEN_LOOP_CONNECTIONS = 256
# An idle connection older than this is closed, not reused: a server's keep-alive timeout (uvicorn:
# 5 s) may be closing it just as a request goes out, which would read as the server's error.
MAX_IDLE_S = 2.0


@dataclass(frozen=True)
class Workload:
    url: str  # base URL, without /v1
    headers: dict[str, str]
    model: str
    max_tokens: int
    stream: bool

    def encode(self) -> bytes:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Say something short about benchmarks please"}],
            "max_tokens": self.max_tokens,
            "stream": self.stream,
        }
        payload = json.dumps(body).encode()
        parts = urlsplit(self.url)
        path = (parts.path.rstrip("/") or "") + "/v1/chat/completions"
        head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json"]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        head.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


@dataclass
class Result:
    seconds: float = 0.0
    completed: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "completed": self.completed,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "rps": round(self.completed / self.seconds, 1) if self.seconds else 0.0,
            "latency_ms": percentiles(self.latencies),
            "ttft_ms": percentiles(self.ttfts),
        }


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}


class Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.parser = Parser(self, response=True)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[bytes, float, bytes]] | None = None
        self.status = b""
        self.first = 0.0
        self.tail = b""
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except ValueError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.parser.eof():
            self._fail(exc or ConnectionResetError("connection closed mid-response"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def on_head(self, start: bytes, headers: dict[bytes, bytes]) -> None:
        self.status = start[9:12]
        self.first = 0.0
        self.tail = b""
        self.closing = headers.get(b"connection", b"").lower() == b"close"

    def on_body(self, data: bytes) -> None:
        if not self.first:
            self.first = time.perf_counter()
        self.tail = (self.tail + data)[-32:]

    def on_done(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, self.first, self.tail))

    async def send(self, request: bytes) -> tuple[bytes, float, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await asyncio.wait_for(self.waiter, TIMEOUT_S)

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.closing


async def connect(url: str) -> Conn:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Conn, parts.hostname or "127.0.0.1", parts.port or 80)
    return conn


async def one(
    conn: Conn | None, url: str, request: bytes, stream: bool, started: float, result: Result
) -> Conn | None:
    """Send one request (connecting first when needed); record it; return the connection if reusable."""
    try:
        if conn is None or not conn.usable:
            conn = await connect(url)
        status, first, tail = await conn.send(request)
    except (TimeoutError, OSError, ValueError) as exc:
        result.error(f"{type(exc).__name__}: {exc}"[:200])
        if conn is not None and conn.transport is not None:
            conn.transport.close()
        return None
    end = time.perf_counter()
    if status != b"200":
        result.error(f"status {status.decode(errors='replace')}: {tail.decode(errors='replace')}")
    elif stream and b"[DONE]" not in tail:
        result.error(f"stream ended without [DONE]: {tail!r}")
    else:
        result.completed += 1
        result.latencies.append(end - started)
        if first:
            result.ttfts.append(first - started)
    return conn if conn.usable else None


async def closed_loop(workload: Workload, concurrency: int, seconds: float) -> Result:
    request = workload.encode()
    result = Result()
    begin = time.perf_counter()
    deadline = begin + seconds

    async def worker() -> None:
        conn: Conn | None = None
        while time.perf_counter() < deadline:
            conn = await one(conn, workload.url, request, workload.stream, time.perf_counter(), result)
            if conn is None:
                await asyncio.sleep(0.001)  # a failing target must not turn this into a busy loop
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - begin
    return result


async def open_loop(workload: Workload, rate: float, seconds: float) -> Result:
    request = workload.encode()
    result = Result()
    idle: list[tuple[Conn, float]] = []
    tasks: set[asyncio.Task[None]] = set()
    open_count = 0

    def take_idle() -> Conn | None:
        nonlocal open_count
        while idle:
            conn, since = idle.pop()
            if time.perf_counter() - since < MAX_IDLE_S and conn.usable:
                return conn
            if conn.transport is not None:
                conn.transport.close()
            open_count -= 1
        return None

    async def fire(intended: float) -> None:
        nonlocal open_count
        conn = take_idle()
        if conn is None:
            if open_count >= MAX_OPEN_LOOP_CONNECTIONS:
                result.error("open loop: too many connections in flight")
                return
            open_count += 1
        kept = await one(conn, workload.url, request, workload.stream, intended, result)
        if kept is not None:
            idle.append((kept, time.perf_counter()))
        else:
            open_count -= 1

    begin = time.perf_counter()
    interval = 1.0 / rate
    n = 0
    while True:
        now = time.perf_counter()
        if now - begin >= seconds:
            break
        while begin + n * interval <= now:
            task = asyncio.create_task(fire(begin + n * interval))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.sleep(max(0.0, begin + n * interval - time.perf_counter()))
    if tasks:
        await asyncio.wait(tasks, timeout=TIMEOUT_S + 5)
    result.seconds = time.perf_counter() - begin
    for conn, _ in idle:
        if conn.transport is not None:
            conn.transport.close()
    return result
