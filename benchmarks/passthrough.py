"""The floor: a bare aiohttp pass-through, run as its own process. It forwards POST /v1/* to one
upstream over a pooled session and copies the response back piece by piece as it arrives; no
auth, no quota, no metrics, no tracing, no ledger. What a gateway costs above this is what its
features cost.

    python benchmarks/passthrough.py --port 8100 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


def build(upstream: str) -> web.Application:
    app = web.Application()
    session: dict[str, ClientSession] = {}

    async def open_session(_: web.Application) -> None:
        session["s"] = ClientSession(
            connector=TCPConnector(limit=1000), timeout=ClientTimeout(total=None, sock_read=600)
        )

    async def close_session(_: web.Application) -> None:
        await session["s"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with session["s"].post(upstream + request.path, data=body, headers=headers) as upstream_reply:
            reply = web.StreamResponse(
                status=upstream_reply.status,
                headers={"Content-Type": upstream_reply.headers.get("Content-Type", "application/json")},
            )
            await reply.prepare(request)
            async for piece in upstream_reply.content.iter_any():
                await reply.write(piece)
            await reply.write_eof()
            return reply

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_post("/v1/{tail:.*}", forward)
    app.router.add_get("/healthz", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="Base URL, without /v1.")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build(args.upstream.rstrip("/")), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
