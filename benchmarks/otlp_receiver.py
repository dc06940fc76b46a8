"""A tiny OTLP/HTTP traces receiver on loopback, run as its own process: the gateway's tracing
exports somewhere real (a connection, a POST, a protobuf body) and the run can tell it did.

    python benchmarks/otlp_receiver.py --port 4318

POST /v1/traces is answered 200 with an empty ExportTraceServiceResponse (an empty protobuf message
is zero bytes, which is what the OTLP/HTTP exporter expects); it counts the posts and their bytes.
GET /stats returns {"posts": N, "bytes": B}. Spans are not decoded: decoding would need the OTLP
protobuf package in the benchmark's environment, and the count of exports is what the run checks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import cast

from fake_upstream import run
from http11 import Parser, response_head


class Counts:
    posts = 0
    bytes = 0


class Receiver(asyncio.Protocol):
    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.parser = Parser(self, response=False)
        self.transport: asyncio.Transport | None = None
        self.start = b""
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except ValueError:
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def on_head(self, start: bytes, headers: dict[bytes, bytes]) -> None:
        self.start = start
        self.size = 0

    def on_body(self, data: bytes) -> None:
        self.size += len(data)

    def on_done(self) -> None:
        if self.transport is None:
            return
        if self.start.startswith(b"POST /v1/traces"):
            self.counts.posts += 1
            self.counts.bytes += self.size
            self.transport.write(response_head(200, b"application/x-protobuf", 0))
        elif self.start.startswith(b"GET /stats"):
            payload = json.dumps({"posts": self.counts.posts, "bytes": self.counts.bytes}).encode()
            self.transport.write(response_head(200, b"application/json", len(payload)) + payload)
        else:
            self.transport.write(response_head(404, b"text/plain", 0))


async def serve(host: str, port: int) -> None:
    counts = Counts()
    server = await asyncio.get_running_loop().create_server(lambda: Receiver(counts), host, port)
    print(f"OTLP receiver listening on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
