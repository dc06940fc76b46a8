"""A request body must arrive within `body_timeout_s`, as a whole: a trickle can not hold a
connection forever (issue 11, bounded inputs: body read time). Real gateway, raw socket on loopback."""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from helpers.gateway_harness import ALPHA_KEY

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).encode()


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {ALPHA_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    sock.sendall(head)
    return sock


def _response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body[: _length(data)])


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_half_a_body_is_answered_408_at_the_deadline(make_stack: Any) -> None:
    stack = make_stack(body_timeout_s=0.5)
    with _connect(stack.url) as sock:
        start = time.monotonic()
        sock.sendall(BODY[: len(BODY) // 2])  # and then nothing more
        status, doc = _response(sock)
        took = time.monotonic() - start
    assert status == 408
    assert doc["error"]["code"] == "body_timeout" and doc["error"]["type"] == "invalid_request_error"
    assert 0.4 <= took < 5
    assert not stack.upstream.seen


def test_a_trickle_does_not_reset_the_deadline(make_stack: Any) -> None:
    stack = make_stack(body_timeout_s=0.6)
    with _connect(stack.url) as sock:
        start = time.monotonic()
        for byte in BODY[:-1]:  # a byte every 0.1 s: each read is quick, the whole is not
            sock.sendall(bytes([byte]))
            if select.select([sock], [], [], 0.1)[0]:  # the answer came: stop sending
                break
        status, _ = _response(sock)
    assert status == 408 and time.monotonic() - start < 5


def test_a_whole_body_in_time_is_served(make_stack: Any) -> None:
    stack = make_stack(body_timeout_s=2)
    with _connect(stack.url) as sock:
        sock.sendall(BODY[:10])
        time.sleep(0.3)
        sock.sendall(BODY[10:])
        status, doc = _response(sock)
    assert status == 200 and doc["choices"]
