"""A fast OpenAI-compatible fake upstream, run as its own process: the model every target proxies to.

    python benchmarks/fake_upstream.py --port 9000 [--tokens 16] [--delay-ms 0]

POST /v1/chat/completions answers at once, plain or streamed (SSE, chunked), like vLLM's server:
a role chunk, one chunk per token, a chunk with the finish reason, then, when the request asks for
`stream_options.include_usage`, the usage chunk (`choices: []`), then `data: [DONE]`. The
completion has `max_tokens` (or `max_completion_tokens`) tokens, else `--tokens`; the prompt's
tokens are its words. Between a stream's tokens it waits `--delay-ms`, or the N of a model named
`paced-N` (so one upstream serves both the saturating and the paced scenarios, whatever a proxy
passes through: every proxy passes the model name). GET /health and /v1/models answer for the
routers that probe them.

A raw asyncio server with responses cached by shape: the floor must be far below any proxy's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections import deque
from typing import Any, cast

from http11 import LAST_CHUNK, Parser, chunk, response_head

JSON = b"application/json"
Frames = tuple[bytes, ...]


class Shapes:
    """Encoded responses, by what varies between requests: model, prompt size, token count."""

    def __init__(self, default_tokens: int) -> None:
        self.default_tokens = default_tokens
        self.plain: dict[tuple[str, int, int], bytes] = {}
        self.streams: dict[tuple[str, int, int, bool], Frames] = {}

    def count(self, body: dict[str, Any]) -> tuple[int, int]:
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or ())
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or self.default_tokens
        return prompt, int(cap)

    def plain_response(self, model: str, prompt: int, tokens: int) -> bytes:
        key = (model, prompt, tokens)
        cached = self.plain.get(key)
        if cached is None:
            doc = {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": 1700000000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(f"w{i}" for i in range(tokens))},
                        "finish_reason": "length",
                    }
                ],
                "usage": usage(prompt, tokens),
            }
            payload = json.dumps(doc, separators=(",", ":")).encode()
            cached = self.plain[key] = response_head(200, JSON, len(payload)) + payload
        return cached

    def stream_frames(self, model: str, prompt: int, tokens: int, with_usage: bool) -> Frames:
        key = (model, prompt, tokens, with_usage)
        cached = self.streams.get(key)
        if cached is None:

            def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
                doc = {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": model,
                    "choices": choices,
                    **extra,
                }
                return chunk(b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n")

            frames = [
                response_head(200, b"text/event-stream", None)
                + event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            ]
            frames += [
                event([{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}])
                for i in range(tokens)
            ]
            tail = event([{"index": 0, "delta": {}, "finish_reason": "length"}])
            if with_usage:
                tail += event([], usage=usage(prompt, tokens))
            frames.append(tail + chunk(b"data: [DONE]\n\n") + LAST_CHUNK)
            cached = self.streams[key] = tuple(frames)
        return cached


def usage(prompt: int, tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}


def pace_of(model: str, default_s: float) -> float:
    if model.startswith("paced-"):
        try:
            return float(model[len("paced-") :]) / 1000
        except ValueError:
            return default_s
    return default_s


MODELS = json.dumps(
    {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "bench"}]}
).encode()
NOT_FOUND = b'{"error":{"message":"not found","type":"not_found"}}'
BAD = b'{"error":{"message":"body is not JSON","type":"invalid_request_error"}}'


class Connection(asyncio.Protocol):
    """One client connection; requests are answered in order (a stream holds the ones behind it)."""

    def __init__(self, shapes: Shapes, delay_s: float) -> None:
        self.shapes = shapes
        self.delay_s = delay_s
        self.parser = Parser(self, response=False)
        self.transport: asyncio.Transport | None = None
        self.start = b""
        self.body = bytearray()
        self.close_after = False
        self.streaming = False
        self.queue: deque[tuple[bytes, bytes, bool]] = deque()

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

    # Parser sink.
    def on_head(self, start: bytes, headers: dict[bytes, bytes]) -> None:
        self.start = start
        self.body = bytearray()
        self.close_after = headers.get(b"connection", b"").lower() == b"close"

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_done(self) -> None:
        request = (self.start, bytes(self.body), self.close_after)
        if self.streaming:
            self.queue.append(request)
        else:
            self.handle(*request)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def handle(self, start: bytes, body: bytes, close_after: bool) -> None:
        method, _, rest = start.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method == b"POST" and path == b"/v1/chat/completions":
            try:
                doc = json.loads(body)
                model = str(doc.get("model", "m"))
                prompt, tokens = self.shapes.count(doc)
            except (ValueError, AttributeError, TypeError):
                self.write(response_head(400, JSON, len(BAD)) + BAD)
            else:
                if doc.get("stream"):
                    options = doc.get("stream_options") or {}
                    with_usage = isinstance(options, dict) and options.get("include_usage") is True
                    frames = self.shapes.stream_frames(model, prompt, tokens, with_usage)
                    self.streaming = True
                    asyncio.get_running_loop().create_task(
                        self.stream(frames, pace_of(model, self.delay_s), close_after)
                    )
                    return
                self.write(self.shapes.plain_response(model, prompt, tokens))
        elif method == b"GET" and path in (b"/health", b"/healthz", b"/health/readiness"):
            self.write(response_head(200, b"text/plain", 2) + b"ok")
        elif method == b"GET" and path == b"/v1/models":
            self.write(response_head(200, JSON, len(MODELS)) + MODELS)
        else:
            self.write(response_head(404, JSON, len(NOT_FOUND)) + NOT_FOUND)
        if close_after and self.transport is not None:
            self.transport.close()

    async def stream(self, frames: Frames, delay_s: float, close_after: bool) -> None:
        # One write per token, with a yield (or the pace) between: a proxy reads them one by one,
        # as it would from an engine, not as one coalesced buffer.
        for frame in frames:
            if self.transport is None:
                return
            self.transport.write(frame)
            await asyncio.sleep(delay_s)
        self.streaming = False
        if close_after and self.transport is not None:
            self.transport.close()
            return
        while self.queue and not self.streaming:
            self.handle(*self.queue.popleft())


async def serve(host: str, port: int, tokens: int, delay_s: float) -> None:
    shapes = Shapes(tokens)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(shapes, delay_s), host, port, backlog=4096)
    print(f"fake upstream listening on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=16, help="Tokens when a request sets no max_tokens.")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="Between a stream's tokens.")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.host, args.port, args.tokens, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
