"""An OpenAI-compatible test upstream: deterministic completions with real `usage`, streams with
delays, and failures on demand.

Behaviour is chosen per request by an extra body field the gateway passes through untouched:
`"test_behavior": "fail" | "unavailable" | "reject" | "hang" | "break"`, and `"test_delay"` (seconds
between stream chunks). A prompt's tokens are its whitespace-separated words; a completion is
`min(max_tokens, 5)` tokens `w0 w1 ...` unless `"test_tokens"` says how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORDS_DEFAULT = 5


@dataclass
class Seen:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    peer: object = None  # the gateway's (host, port): the same port means a reused connection


@dataclass
class FakeUpstream:
    seen: list[Seen] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)  # x-request-id of requests whose client left
    finished: list[str] = field(default_factory=list)
    in_flight: int = 0
    # An engine's batch cap: at most this many completions generate at once, later ones wait (FIFO)
    # for a place, like vLLM's max_num_seqs. None: no cap.
    max_generating: int | None = None
    generating: int = 0
    peak_generating: int = 0
    _places: asyncio.Semaphore | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        return app

    def bodies(self, path: str | None = None) -> list[dict[str, Any]]:
        return [s.body for s in self.seen if path is None or s.path == path]

    async def _begin(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(Seen(request.path, body, {k.lower(): v for k, v in request.headers.items()}, peer))
        return body  # type: ignore[no-any-return]

    async def _misbehave(self, body: dict[str, Any], rid: str = "") -> web.StreamResponse | None:
        behavior = body.get("test_behavior")
        if behavior == "fail":
            return web.json_response({"error": {"message": "engine exploded", "type": "x"}}, status=500)
        if behavior == "unavailable":
            return web.json_response({"error": {"message": "no replica", "type": "x"}}, status=503)
        if behavior == "reject":
            return web.json_response(
                {"error": {"message": "context too long", "type": "BadRequestError", "code": 400}}, status=400
            )
        if behavior == "not_json":
            return web.Response(text="<html>proxy error</html>", content_type="text/html")
        if behavior == "busy":
            return web.json_response(
                {"error": {"message": "queue full", "type": "x"}}, status=429, headers={"Retry-After": "7"}
            )
        if behavior == "busy_no_header":
            return web.json_response({"error": {"message": "queue full", "type": "x"}}, status=429)
        if behavior == "hang":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:  # the gateway closed the connection
                self.aborted.append(rid)
                raise
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        if self.max_generating is not None and self._places is None:
            self._places = asyncio.Semaphore(self.max_generating)
        async with self._places or contextlib.nullcontext():
            self.generating += 1
            self.peak_generating = max(self.peak_generating, self.generating)
            try:
                return await self._generate_now(request, chat)
            finally:
                self.generating -= 1

    async def _generate_now(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await self._begin(request)
        failed = await self._misbehave(body, request.headers.get("X-Request-Id", ""))
        if failed is not None:
            return failed
        if chat:
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        else:
            prompt_tokens = len(str(body["prompt"]).split())
        prompt_tokens = int(body.get("test_prompt_tokens", prompt_tokens))  # a tokenizer that counts more
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        count = min(int(body.get("test_tokens", WORDS_DEFAULT)), cap)
        n = int(body.get("n") or 1)
        words = [f"w{i}" for i in range(count)]
        finish = "length" if count == cap else "stop"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": count * n,
            "total_tokens": prompt_tokens + count * n,
        }
        rid = request.headers.get("X-Request-Id", "")
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            if chat:
                choices = [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": " ".join(words)},
                        "finish_reason": finish,
                    }
                    for i in range(n)
                ]
            else:
                choices = [{"index": i, "text": " ".join(words), "finish_reason": finish} for i in range(n)]
            self.finished.append(rid)
            doc = {
                "id": "cmpl-1",
                "object": kind,
                "created": int(time.time()),
                "model": body["model"],
                "choices": choices,
                "usage": usage,
            }
            return web.json_response(doc)

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        delay = float(body.get("test_delay", 0.0))
        self.in_flight += 1
        try:

            def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
                doc = {
                    "id": "cmpl-1",
                    "object": f"{kind}.chunk",
                    "created": 0,
                    "model": body["model"],
                    "choices": choices,
                    **extra,
                }
                return b"data: " + json.dumps(doc).encode() + b"\n\n"

            if chat:
                await response.write(
                    chunk([{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(n)])
                )
            for k, word in enumerate(words):
                if delay:
                    await asyncio.sleep(delay)
                if body.get("test_behavior") == "break" and k == 2:
                    request.transport.close()  # type: ignore[union-attr]
                    return response
                last = k == len(words) - 1
                for i in range(n):
                    piece = {"content": word + " "} if chat else None
                    choice: dict[str, Any] = {"index": i, "finish_reason": finish if last else None}
                    if chat:
                        choice["delta"] = piece
                    else:
                        choice["text"] = word + " "
                    await response.write(chunk([choice]))
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(chunk([], usage=usage))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.finished.append(rid)
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.aborted.append(rid)
            raise
        finally:
            self.in_flight -= 1

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin(request)
        failed = await self._misbehave(body)
        if failed is not None:
            return failed
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        tokens = sum(len(str(i).split()) for i in inputs)
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


async def start_upstream(upstream: FakeUpstream, host: str = "127.0.0.1") -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(upstream.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://{host}:{port}"


def main() -> None:
    """Run standalone (for the multi-process tests and local measurement): prints its URL."""
    import sys

    async def serve() -> None:
        runner, url = await start_upstream(FakeUpstream())
        print(url, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
