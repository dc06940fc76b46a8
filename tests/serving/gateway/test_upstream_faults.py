"""A model server that misbehaves: a redirect, an answer too large, usage that is no count. The
gateway answers OpenAI-shaped, follows nothing, bounds its memory and charges what it reserved,
and the ledger says why (UsageRecord.charge)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from helpers.gateway_harness import ALPHA_KEY, LoopThread, Stack, eventually
from respublica.serving.gateway.routing.table import Route, RouteTable

HELLO = [{"role": "user", "content": "hello"}]
HUGE = 2 * 1024 * 1024  # the gateway is started with max_response_bytes below this


class Misbehaving:
    def __init__(self) -> None:
        self.redirect_followed = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/redirect/v1/chat/completions", self.redirect)
        app.router.add_post("/huge/v1/chat/completions", self.huge)
        app.router.add_post("/usage/v1/chat/completions", self.usage)
        app.router.add_post("/elsewhere", self.elsewhere)
        return app

    async def redirect(self, request: web.Request) -> web.Response:
        # A JSON body that looks like an answer: a gateway that passed 3xx bodies on would send it.
        body = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        return web.json_response(body, status=307, headers={"Location": "/elsewhere"})

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.redirect_followed += 1
        return web.json_response({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    async def huge(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})  # no length declared
        await response.prepare(request)
        chunk = b" " * 65536
        for _ in range(HUGE // len(chunk) + 1):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def usage(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": body["test_prompt"], "completion_tokens": body["test_completion"]},
            }
        )


@pytest.fixture
def bad(loop_thread: LoopThread) -> Iterator[tuple[Misbehaving, str]]:
    server = Misbehaving()

    async def start() -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return runner, f"http://127.0.0.1:{port}"

    runner, url = loop_thread.run(start())
    yield server, url
    loop_thread.run(runner.cleanup())


def routes(url: str) -> RouteTable:
    return RouteTable.of(
        [
            Route("redirect", (url + "/redirect",)),
            Route("huge", (url + "/huge",)),
            Route("usage", (url + "/usage",)),
        ]
    )


def post(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        stack.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {ALPHA_KEY}"},
        timeout=30,
    )


def test_an_upstream_redirect_is_not_followed(make_stack: Any, bad: tuple[Misbehaving, str]) -> None:
    server, url = bad
    stack = make_stack(routes=routes(url))
    response = post(stack, {"model": "redirect", "messages": HELLO, "max_tokens": 5})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert "redirect" in response.json()["error"]["message"]
    assert server.redirect_followed == 0
    eventually(lambda: stack.ledger.records)
    assert stack.ledger.records[-1].input_tokens + stack.ledger.records[-1].output_tokens == 0


def test_a_huge_upstream_answer_is_bounded(make_stack: Any, bad: tuple[Misbehaving, str]) -> None:
    _, url = bad
    stack = make_stack(routes=routes(url), upstream={"max_response_bytes": HUGE // 2})
    response = post(stack, {"model": "huge", "messages": HELLO, "max_tokens": 5})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_too_large"
    eventually(lambda: stack.ledger.records)
    record = stack.ledger.records[-1]
    assert record.charge == "reservation" and record.input_tokens + record.output_tokens > 5


@pytest.mark.parametrize(
    ("prompt", "completion"), [(-5, 3), (3, -(2**63)), (2**64, 1), (10**13, 0), ("7", 1)]
)
def test_usage_that_is_no_count_charges_the_reservation(
    make_stack: Any, bad: tuple[Misbehaving, str], prompt: Any, completion: Any
) -> None:
    _, url = bad
    stack = make_stack(routes=routes(url))
    body = {
        "model": "usage",
        "messages": HELLO,
        "max_tokens": 5,
        "test_prompt": prompt,
        "test_completion": completion,
    }
    response = post(stack, body)
    assert response.status_code == 200  # the answer is the model's; only its count is not believed
    eventually(lambda: stack.ledger.records)
    record = stack.ledger.records[-1]
    assert record.charge == "reservation"
    assert 5 < record.input_tokens + record.output_tokens < 1000
    assert record.input_tokens >= 0 and record.output_tokens >= 0


def test_believable_usage_is_charged_as_reported(make_stack: Any, bad: tuple[Misbehaving, str]) -> None:
    _, url = bad
    stack = make_stack(routes=routes(url))
    body = {"model": "usage", "messages": HELLO, "max_tokens": 5, "test_prompt": 4, "test_completion": 2}
    assert post(stack, body).status_code == 200
    eventually(lambda: stack.ledger.records)
    record = stack.ledger.records[-1]
    assert (record.charge, record.input_tokens, record.output_tokens) == ("usage", 4, 2)
