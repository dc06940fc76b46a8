"""Every error the gateway answers with, OpenAI-shaped, with the right status."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import Any

import httpx
import openai
import pytest

from helpers.gateway_harness import (
    ALPHA_KEY,
    BETA_KEY,
    TIGHT_BUDGET,
    TIGHT_KEY,
    Stack,
    closed_port_url,
    eventually,
)
from respublica.serving.gateway.quota import RedisQuotaStore
from respublica.serving.gateway.routing.table import Route, RouteHolder, RouteTable

HELLO = [{"role": "user", "content": "hello there gateway"}]


def raw(
    stack: Stack, body: Any, key: str | None = ALPHA_KEY, path: str = "/v1/chat/completions"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, bytes) else None
    return httpx.post(
        stack.url + path, content=content, json=None if content else body, headers=headers, timeout=20
    )


def assert_error(
    response: httpx.Response, status: int, code: str, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param and error["message"]
    return error  # type: ignore[no-any-return]


def api(stack: Stack, key: str = ALPHA_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=20)


def test_400_bad_json_and_bad_fields(stack: Stack) -> None:
    assert_error(raw(stack, b"{not json"), 400, "invalid_json")
    assert_error(raw(stack, b"[1, 2]"), 400, "invalid_body")
    assert_error(raw(stack, {"messages": HELLO}), 400, "missing_model", "model")
    assert_error(
        raw(stack, {"model": "m", "messages": HELLO, "max_tokens": 0}), 400, "invalid_value", "max_tokens"
    )
    assert_error(raw(stack, {"model": "m", "messages": HELLO, "n": "two"}), 400, "invalid_value", "n")
    assert_error(
        raw(stack, {"model": "m", "messages": HELLO, "stream": "yes"}), 400, "invalid_value", "stream"
    )
    with pytest.raises(openai.BadRequestError):
        api(stack).chat.completions.create(model="m", messages=HELLO, max_tokens=-1)


def test_401_without_or_with_a_wrong_key(stack: Stack) -> None:
    error = assert_error(raw(stack, {"model": "m", "messages": HELLO}, key=None), 401, "missing_api_key")
    assert error["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError) as caught:
        api(stack, key="rp-nobody-000").chat.completions.create(model="m", messages=HELLO)
    assert caught.value.code == "invalid_api_key"
    assert not stack.upstream.seen


def test_404_when_model_access_or_tenant_allow_list_refuses(stack: Stack) -> None:
    """The same answer as for a model that does not exist: a tenant learns no private model's name."""
    private = raw(stack, {"model": "m-private", "messages": HELLO})  # m-private admits only tenant beta
    absent = raw(stack, {"model": "m-absent", "messages": HELLO})
    assert private.status_code == absent.status_code == 404
    assert private.content == absent.content.replace(b"m-absent", b"m-private")
    with pytest.raises(openai.NotFoundError) as caught:  # beta's own allow list has only m-private
        api(stack, BETA_KEY).chat.completions.create(model="m", messages=HELLO)
    assert caught.value.code == "model_not_found"
    assert api(stack, BETA_KEY).chat.completions.create(model="m-private", messages=HELLO).choices
    assert len(stack.upstream.seen) == 1


def test_404_unknown_model_and_endpoint(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        api(stack).chat.completions.create(model="gpt-17", messages=HELLO)
    assert caught.value.code == "model_not_found"
    assert raw(stack, {}, path="/v1/nothing").json()["error"]["code"] == "http_404"


def test_413_body_too_large(make_stack: Any) -> None:
    stack = make_stack(max_body_bytes=2048)
    big = [{"role": "user", "content": "x" * 4096}]
    assert_error(raw(stack, {"model": "m", "messages": big}), 413, "body_too_large")
    with pytest.raises(openai.APIStatusError) as caught:
        api(stack).chat.completions.create(model="m", messages=big)
    assert caught.value.status_code == 413


def test_429_with_retry_after_and_ratelimit_headers(make_stack: Any) -> None:
    stack = make_stack()
    response = raw(stack, {"model": "m", "messages": HELLO, "max_tokens": 100}, key=TIGHT_KEY)
    assert_error(response, 429, "tokens_per_minute")
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-limit-tokens"] == str(TIGHT_BUDGET)
    assert int(response.headers["x-ratelimit-remaining-tokens"]) <= TIGHT_BUDGET
    assert response.headers["x-ratelimit-limit-requests"] == "100"
    assert response.headers["x-ratelimit-reset-tokens"]
    with pytest.raises(openai.RateLimitError):
        api(stack, TIGHT_KEY).chat.completions.create(model="m", messages=HELLO, max_tokens=100)
    assert not stack.upstream.seen
    assert [r for r in stack.ledger.records if r.status == 429] == []  # counted in metrics, not the ledger


def test_502_upstream_refused_or_failing(stack: Stack) -> None:
    assert_error(raw(stack, {"model": "m-refused", "messages": HELLO}), 502, "upstream_unreachable")
    error = assert_error(
        raw(stack, {"model": "m", "messages": HELLO, "test_behavior": "fail"}), 502, "upstream_error"
    )
    assert error["message"] == "engine exploded"
    # Unreachable: nothing ran, nothing charged. The engine failed after it got the request: it may
    # have generated, so what was held is charged.
    assert not stack.quota.held
    (refused, _), (failed, held) = stack.quota.reserved.items()
    assert stack.quota.settled == [(refused, 0), (failed, held)] and held > 0


def test_502_upstream_answer_not_json_charges_the_reservation(stack: Stack) -> None:
    body = {"model": "m", "messages": HELLO, "max_tokens": 40, "test_behavior": "not_json"}
    assert_error(raw(stack, body), 502, "upstream_invalid")
    ((rid, used),) = stack.quota.settled
    assert used == stack.quota.reserved[rid] >= 40


def test_upstream_refusals_charge_nothing(stack: Stack) -> None:
    # A 4xx or a 503 means the model did not run: nothing is charged.
    assert_error(
        raw(stack, {"model": "m", "messages": HELLO, "test_behavior": "reject"}), 400, "upstream_rejected"
    )
    assert_error(
        raw(stack, {"model": "m", "messages": HELLO, "test_behavior": "unavailable"}), 503, "upstream_error"
    )
    assert [used for _, used in stack.quota.settled] == [0, 0]


def test_upstream_429_carries_retry_after(stack: Stack) -> None:
    response = raw(stack, {"model": "m", "messages": HELLO, "test_behavior": "busy"})
    assert_error(response, 429, "upstream_rejected")
    assert response.headers["retry-after"] == "7"
    response = raw(stack, {"model": "m", "messages": HELLO, "test_behavior": "busy_no_header"})
    assert_error(response, 429, "upstream_rejected")
    assert int(response.headers["retry-after"]) >= 1


def test_503_not_ready_or_upstream_unavailable(stack: Stack) -> None:
    assert_error(raw(stack, {"model": "m-waking", "messages": HELLO}), 503, "model_not_ready", "model")
    assert_error(
        raw(stack, {"model": "m", "messages": HELLO, "test_behavior": "unavailable"}), 503, "upstream_error"
    )


def test_504_upstream_too_slow(make_stack: Any) -> None:
    stack = make_stack(upstream={"read_timeout_s": 0.5})
    assert_error(
        raw(stack, {"model": "m", "messages": HELLO, "test_behavior": "hang"}), 504, "upstream_timeout"
    )
    assert stack.ledger.records[-1].status == 504 and not stack.quota.held
    # It reached the model, whose work is unknown: the reservation is charged, not 0.
    ((rid, used),) = stack.quota.settled
    assert used == stack.quota.reserved[rid] > 0


def test_a_model_that_wakes_gets_its_wake_budget_not_the_read_timeout(make_stack: Any) -> None:
    """A route with a wake budget (a model scaled to zero) waits past the gateway's read timeout: a
    stream whose tokens come 0.8 s apart finishes there, and breaks off on an ordinary route."""
    holder = RouteHolder(RouteTable.of([]))
    stack = make_stack(routes=holder, upstream={"read_timeout_s": 0.5})
    holder.replace(
        RouteTable.of(
            [
                Route("m", (stack.upstream_url,)),
                # Scaled to zero on a cluster: its replica may take this long to start.
                Route("m-cold", (stack.upstream_url,), wake_timeout_s=5.0),
            ]
        )
    )
    body = {"messages": HELLO, "stream": True, "max_tokens": 3, "extra_body": {"test_delay": 0.8}}
    slow = [c for c in api(stack).chat.completions.create(model="m-cold", **body)]  # type: ignore[call-overload]
    assert slow[-1].choices == [] or slow[-1].choices[0].finish_reason is not None
    eventually(lambda: len(stack.ledger.records) == 1)
    assert stack.ledger.records[0].status == 200
    with pytest.raises(openai.APIError):
        list(api(stack).chat.completions.create(model="m", **body))  # type: ignore[call-overload]
    eventually(lambda: len(stack.ledger.records) == 2)
    assert stack.ledger.records[1].status != 200


def test_upstream_4xx_passes_through(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api(stack).chat.completions.create(model="m", messages=HELLO, extra_body={"test_behavior": "reject"})
    assert "context too long" in caught.value.message


def test_failover_to_the_next_endpoint_on_connect_error(stack: Stack) -> None:
    for _ in range(3):
        assert api(stack).chat.completions.create(model="m-failover", messages=HELLO, max_tokens=1).choices
    assert all(r.endpoint == stack.upstream_url for r in stack.ledger.records)


def test_stream_broken_by_upstream_is_recorded(stack: Stack) -> None:
    stream = api(stack).chat.completions.create(
        model="m", messages=HELLO, stream=True, extra_body={"test_behavior": "break"}
    )
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    # An `error` event ends the stream: the client says why instead of a bare connection error.
    assert "broke off the response" in caught.value.message
    eventually(lambda: stack.ledger.records)
    record = stack.ledger.records[-1]
    assert record.status == 502 and record.error_type == "upstream_broken" and not stack.quota.held


def test_request_cancelled_by_shutdown_is_recorded_and_charged(stack: Stack, loop_thread: Any) -> None:
    body = {"model": "m", "messages": HELLO, "max_tokens": 30, "test_behavior": "hang"}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(raw, stack, body)
        eventually(lambda: stack.upstream.seen)

        async def cancel_requests() -> None:  # what uvicorn does to requests left at shutdown
            for task in asyncio.all_tasks():
                if "run_asgi" in task.get_coro().__qualname__:  # type: ignore[union-attr]
                    task.cancel()

        loop_thread.run(cancel_requests())
        eventually(lambda: stack.ledger.records)
        with contextlib.suppress(httpx.HTTPError):
            pending.result(20)
    record = stack.ledger.records[-1]
    assert (record.status, record.error_type) == (503, "gateway_shutdown")
    ((rid, used),) = stack.quota.settled
    assert used == stack.quota.reserved[rid] >= 30


def test_models_lists_only_what_the_caller_may_use(stack: Stack) -> None:
    alpha = {m.id for m in api(stack).models.list()}
    assert alpha == {"m", "m:sql", "m-refused", "m-failover"}  # not m-private (access), not m-waking
    beta = {m.id for m in api(stack, BETA_KEY).models.list()}
    assert beta == {"m-private"}
    assert raw(stack, b"", key=None, path="/v1/models").status_code == 405


def test_503_when_the_quota_store_is_unreachable(make_stack: Any) -> None:
    dead_redis = closed_port_url().replace("http://", "redis://") + "/0"
    stack = make_stack(quota=RedisQuotaStore.from_url(dead_redis, timeout_s=0.2, fail_policy="closed"))
    response = raw(stack, {"model": "m", "messages": HELLO})
    assert_error(response, 503, "store_unavailable")
    assert "retry-after" in response.headers and not stack.upstream.seen
