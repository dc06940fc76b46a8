"""An incremental HTTP/1.1 message parser, shared by the fake upstream, the OTLP receiver and the
load generator.

Raw asyncio protocols instead of aiohttp on the measuring side: the harness must cost far less per
request than what it measures (the floor here is tens of microseconds), so it parses only what it
needs: the start line, the headers, and a body framed by Content-Length, chunked encoding, or (a
response only) the end of the connection.
"""

from __future__ import annotations

from typing import Protocol

MAX_HEAD = 64 * 1024

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _TO_EOF = range(7)


class Sink(Protocol):
    def on_head(self, start: bytes, headers: dict[bytes, bytes]) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_done(self) -> None: ...


class ParseError(ValueError):
    """The peer sent something that is not HTTP/1.1 as this parser reads it."""


class Parser:
    """Feed it bytes; it calls the sink per message: head, body pieces, done. Messages may follow
    each other on one connection (keep-alive, pipelining)."""

    def __init__(self, sink: Sink, *, response: bool) -> None:
        self.sink = sink
        self.response = response
        self.buf = bytearray()
        self.state = _HEAD
        self.remaining = 0

    def feed(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ParseError("head larger than 64 KiB")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._head(head)
            elif state in (_LENGTH, _CHUNK_DATA):
                take = min(self.remaining, len(buf))
                self.sink.on_body(bytes(buf[:take]))
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    if state == _LENGTH:
                        self._done()
                    else:
                        self.state = _CHUNK_CRLF
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                try:
                    size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                except ValueError:
                    raise ParseError(f"bad chunk size {bytes(buf[:end])[:20]!r}") from None
                del buf[: end + 2]
                if size == 0:
                    self.state = _TRAILERS
                else:
                    self.remaining = size
                    self.state = _CHUNK_DATA
            elif state == _CHUNK_CRLF:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._done()
            else:  # _TO_EOF
                self.sink.on_body(bytes(buf))
                buf.clear()

    def eof(self) -> bool:
        """The connection ended; True when that completed a message (a body read to the end)."""
        if self.state == _TO_EOF:
            self._done()
            return True
        return False

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ParseError(f"bad header line {line[:40]!r}")
            headers[name.strip().lower()] = value.strip()
        start = lines[0]
        self.sink.on_head(start, headers)
        if self.response and (start[9:10] == b"1" or start[9:12] in (b"204", b"304")):
            self._done()
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self.state = _CHUNK_SIZE
        elif b"content-length" in headers:
            self.remaining = int(headers[b"content-length"])
            if self.remaining == 0:
                self._done()
            else:
                self.state = _LENGTH
        elif self.response:
            self.state = _TO_EOF
        else:
            self._done()

    def _done(self) -> None:
        self.state = _HEAD
        self.sink.on_done()


def chunk(data: bytes) -> bytes:
    """One piece of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def response_head(status: int, content_type: bytes, length: int | None, extra: bytes = b"") -> bytes:
    """A response head: Content-Length when the length is known, chunked otherwise."""
    framing = b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked"
    reason = {200: b"OK", 404: b"Not Found", 400: b"Bad Request", 405: b"Method Not Allowed"}.get(
        status, b"Status"
    )
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s\r\n%s\r\n" % (
        status,
        reason,
        content_type,
        framing,
        extra,
    )
