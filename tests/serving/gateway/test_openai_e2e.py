"""End to end with the official openai client: gateway (real uvicorn) in front of a fake upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from helpers.gateway_harness import (
    ALPHA_DEFAULT_CAP,
    ALPHA_KEY,
    ALPHA_KEY_ID,
    GAMMA_KEY,
    LoopThread,
    Stack,
    eventually,
)


def client(stack: Stack, key: str = ALPHA_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=20)


def aclient(stack: Stack, key: str = ALPHA_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=20)


HELLO = [{"role": "user", "content": "hello there gateway"}]


def test_chat_sync_passes_usage_and_settles(stack: Stack) -> None:
    reply = client(stack).chat.completions.create(model="m", messages=HELLO, max_tokens=3, temperature=0.5)
    assert reply.choices[0].message.content == "w0 w1 w2"
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 3)
    seen = stack.upstream.bodies("/v1/chat/completions")[-1]
    assert seen["max_tokens"] == 3 and seen["temperature"] == 0.5  # passed through untouched
    assert stack.quota.settled[-1][1] == 6 and not stack.quota.held
    record = stack.ledger.records[-1]
    assert (record.tenant, record.subject, record.model, record.status) == ("alpha", ALPHA_KEY_ID, "m", 200)
    assert (record.input_tokens, record.output_tokens) == (3, 3)


def test_default_cap_written_upstream_when_client_gives_none(stack: Stack) -> None:
    client(stack).chat.completions.create(model="m", messages=HELLO)
    assert stack.upstream.bodies()[-1]["max_tokens"] == ALPHA_DEFAULT_CAP
    client(stack).completions.create(model="m", prompt="one two")
    assert stack.upstream.bodies("/v1/completions")[-1]["max_tokens"] == ALPHA_DEFAULT_CAP
    client(stack).chat.completions.create(model="m", messages=HELLO, max_completion_tokens=7)
    seen = stack.upstream.bodies()[-1]
    assert seen["max_completion_tokens"] == 7 and "max_tokens" not in seen


def test_default_cap_inherits_key_then_tenant_then_gateway(make_stack: Any) -> None:
    stack = make_stack(default_max_tokens=200)
    client(stack).chat.completions.create(model="m", messages=HELLO)  # alpha's own cap
    assert stack.upstream.bodies()[-1]["max_tokens"] == ALPHA_DEFAULT_CAP
    gamma = openai.OpenAI(base_url=stack.base_url, api_key=GAMMA_KEY, max_retries=0, timeout=20)
    gamma.chat.completions.create(model="m", messages=HELLO)  # gamma sets none: the gateway's
    assert stack.upstream.bodies()[-1]["max_tokens"] == 200


async def test_chat_async_and_completions_and_embeddings(stack: Stack) -> None:
    api = aclient(stack)
    chat, text, emb = await asyncio.gather(
        api.chat.completions.create(model="m", messages=HELLO, max_tokens=2),
        api.completions.create(model="m", prompt="a b c d", max_tokens=4),
        api.embeddings.create(model="m", input=["x y", "z"]),
    )
    assert chat.choices[0].message.content == "w0 w1"
    assert text.choices[0].text == "w0 w1 w2 w3" and text.usage is not None and text.usage.prompt_tokens == 4
    assert len(emb.data) == 2 and emb.usage.prompt_tokens == 3
    assert sorted(r.model for r in stack.ledger.records) == ["m", "m", "m"]


def test_lora_adapter_name_routes_to_its_base(stack: Stack) -> None:
    reply = client(stack).chat.completions.create(model="m:sql", messages=HELLO, max_tokens=1)
    assert reply.choices[0].message.content == "w0"
    assert stack.upstream.bodies()[-1]["model"] == "m:sql"
    with pytest.raises(openai.NotFoundError):
        client(stack).chat.completions.create(model="m:nope", messages=HELLO)


def test_stream_passes_chunks_and_strips_the_usage_chunk(stack: Stack) -> None:
    chunks = list(client(stack).chat.completions.create(model="m", messages=HELLO, max_tokens=4, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3 "
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert stack.upstream.bodies()[-1]["stream_options"] == {"include_usage": True}
    eventually(lambda: stack.ledger.records)
    assert stack.quota.settled[-1][1] == 3 + 4  # settled from the upstream's usage
    record = stack.ledger.records[-1]
    assert record.stream and (record.input_tokens, record.output_tokens) == (3, 4)
    assert record.ttft_ms is not None


def test_stream_keeps_usage_chunk_when_the_client_asks(stack: Stack) -> None:
    stream = client(stack).completions.create(
        model="m", prompt="p q", max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 2)


async def test_async_stream_arrives_chunk_by_chunk(stack: Stack) -> None:
    api = aclient(stack)
    stream = await api.chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
        max_tokens=8,
        extra_body={"test_tokens": 8, "test_delay": 0.25},
    )
    got_first_before_upstream_finished = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and got_first_before_upstream_finished is None:
            got_first_before_upstream_finished = stack.upstream.in_flight == 1 and not stack.upstream.finished
    assert got_first_before_upstream_finished is True
    assert stack.upstream.finished


async def test_client_disconnect_cancels_upstream_and_settles(stack: Stack) -> None:
    api = aclient(stack)
    response = await api.chat.completions.with_raw_response.create(
        model="m",
        messages=HELLO,
        stream=True,
        max_tokens=40,
        extra_body={"test_tokens": 40, "test_delay": 0.1},
    )
    request_id = response.headers["x-request-id"]
    stream = response.parse()
    seen = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
            if seen == 3:
                break
    await stream.close()
    for _ in range(100):
        if request_id in stack.upstream.aborted and stack.ledger.records:
            break
        await asyncio.sleep(0.05)
    assert request_id in stack.upstream.aborted and request_id not in stack.upstream.finished
    record = stack.ledger.records[-1]
    assert record.status == 499 and record.error_type == "client_disconnected"
    assert not stack.quota.held  # the reservation is settled, not leaked
    rid, used = stack.quota.settled[-1]
    # Charged: the prompt's bound and the chunks that went out; not the whole reservation.
    assert 3 <= record.output_tokens < 40 and used < stack.quota.reserved[rid]


def test_ledger_rows_match_the_upstreams_usage(stack: Stack, loop_thread: LoopThread) -> None:
    api = client(stack)
    api.chat.completions.create(model="m", messages=HELLO, max_tokens=2)
    list(api.completions.create(model="m", prompt="one two three four", max_tokens=3, stream=True))
    eventually(lambda: len(stack.ledger.records) == 2)
    loop_thread.run(stack.ledger.flush())
    rows = loop_thread.run(stack.db.fetch("SELECT * FROM usage ORDER BY started_at"))
    assert [(r["input_tokens"], r["output_tokens"], r["status"]) for r in rows] == [(3, 2, 200), (4, 3, 200)]
    assert {r["subject"] for r in rows} == {ALPHA_KEY_ID} and "prompt" not in str(rows)


def test_upstream_connections_are_pooled(stack: Stack) -> None:
    api = client(stack)
    for _ in range(5):
        api.chat.completions.create(model="m", messages=HELLO, max_tokens=1)
        list(api.chat.completions.create(model="m", messages=HELLO, max_tokens=1, stream=True))
    assert len({s.peer for s in stack.upstream.seen}) == 1  # one keep-alive connection, reused


def test_client_leaving_a_unary_request_cancels_upstream(stack: Stack) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            stack.base_url + "/chat/completions",
            json={"model": "m", "messages": HELLO, "max_tokens": 9, "test_behavior": "hang"},
            headers={"Authorization": f"Bearer {ALPHA_KEY}"},
            timeout=httpx.Timeout(5, read=0.5),
        )
    eventually(lambda: stack.upstream.aborted and stack.ledger.records)
    record = stack.ledger.records[-1]
    assert record.status == 499
    assert stack.upstream.aborted == [stack.upstream.seen[-1].headers["x-request-id"]]
    rid, used = stack.quota.settled[-1]
    assert used == stack.quota.reserved[rid]  # left before any answer: what was held may have run
