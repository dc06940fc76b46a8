"""Bounded inputs: no number a client or a model sends can overflow a quota counter, crash the
estimator or reach a span; fail-open never admits what this process can still refuse itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from helpers.redis_server import start_redis
from respublica.serving.gateway import jsoncodec
from respublica.serving.gateway.contracts import Admission, Limits, Principal, Rejection
from respublica.serving.gateway.errors import GatewayError
from respublica.serving.gateway.quota import RedisQuotaStore
from respublica.serving.gateway.quota.arithmetic import MAX_RESERVATION, plan_admission
from respublica.serving.gateway.quota.estimate import Endpoint
from respublica.serving.gateway.routes.body import parse_body
from respublica.serving.gateway.routes.openai import int_or_none
from respublica.serving.gateway.routes.plan import Plan, plan_request
from respublica.serving.gateway.routing.table import Route, RouteTable
from respublica.serving.gateway.streaming import SSETap

TABLE = RouteTable.of([Route("llama", ("http://10.0.0.1:8000",))])
WHO = Principal(tenant="acme", subject="k1", tenant_limits=Limits())
CHAT: dict[str, Any] = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION: dict[str, Any] = {"model": "llama", "prompt": "hi"}


def plan(doc: dict[str, Any], endpoint: Endpoint = "chat") -> Plan | GatewayError:
    raw = jsoncodec.dumps(doc)
    return plan_request(doc, raw, endpoint, WHO, TABLE.resolve(doc["model"]), 1024)


@pytest.mark.parametrize(
    ("extra", "endpoint", "param"),
    [
        ({"max_tokens": 2**63}, "chat", "max_tokens"),
        ({"max_tokens": 2**64 + 5}, "completions", "max_tokens"),
        ({"max_completion_tokens": 10**12}, "chat", "max_completion_tokens"),
        ({"max_completion_tokens": 10**12}, "completions", "max_completion_tokens"),
        ({"n": 10**9}, "chat", "n"),
        ({"best_of": 2**63}, "completions", "best_of"),
    ],
)
def test_numbers_beyond_any_model_are_400_naming_the_field(
    extra: dict[str, Any], endpoint: Endpoint, param: str
) -> None:
    doc = {**(CHAT if endpoint == "chat" else COMPLETION), **extra}
    result = plan(doc, endpoint)
    assert isinstance(result, GatewayError)
    assert (result.status, result.param) == (400, param)


def test_the_largest_allowed_request_still_fits_every_counter() -> None:
    many = {**COMPLETION, "prompt": ["x"] * 100_000, "max_tokens": 10_000_000, "n": 128}
    result = plan(many, "completions")
    assert isinstance(result, GatewayError)
    assert (result.status, result.code) == (400, "request_too_large")
    big = plan({**CHAT, "max_tokens": 10_000_000, "n": 128})
    assert isinstance(big, Plan)
    assert big.reserve <= MAX_RESERVATION
    with pytest.raises(ValueError):
        plan_admission(WHO, MAX_RESERVATION + 1, time.time())


def test_completions_reserve_for_max_completion_tokens_too() -> None:
    result = plan({**COMPLETION, "max_completion_tokens": 5000}, "completions")
    assert isinstance(result, Plan)
    assert result.cap == 5000
    assert result.reserve >= 5000
    both = plan({**CHAT, "max_tokens": 7000, "max_completion_tokens": 10})
    assert isinstance(both, Plan)
    assert both.reserve >= 7000  # whichever the engine honours, the larger is reserved


@pytest.mark.parametrize("depth", [300, 900, 1000])
def test_deep_nesting_is_400_not_500(depth: int) -> None:
    raw = (
        b'{"model":"llama","messages":[{"role":"user","content":"x","extra":'
        + b"[" * depth
        + b"]" * depth
        + b"}]}"
    )
    try:
        doc = parse_body(raw)
    except GatewayError as exc:  # the parser's own depth limit
        assert exc.status == 400
        return
    result = plan_request(doc, raw, "chat", WHO, TABLE.resolve("llama"), 1024)
    assert isinstance(result, (Plan, GatewayError))
    if isinstance(result, GatewayError):
        assert result.status == 400


def test_a_model_name_is_bounded() -> None:
    with pytest.raises(GatewayError) as caught:
        parse_body(jsoncodec.dumps({"model": "m" * 10_000, "messages": []}))
    assert (caught.value.status, caught.value.param) == (400, "model")


@pytest.mark.parametrize("value", [-1, -(2**63), 2**63, 2**70, 10**13, 1.5, "12", True, None])
def test_reported_usage_out_of_range_is_no_report(value: Any) -> None:
    assert int_or_none(value) is None


def test_reported_usage_in_range_is_believed() -> None:
    assert int_or_none(0) == 0
    assert int_or_none(123_456) == 123_456


def test_a_stream_without_event_boundaries_is_bounded_and_linear() -> None:
    tap = SSETap(strip_usage_chunk=False, max_event_bytes=1 << 20)
    piece = b"x" * 4096
    fed = 0
    with pytest.raises(GatewayError) as caught:
        for _ in range(10_000):
            fed += 1
            assert tap.feed(piece) == b""
    assert caught.value.status == 502
    assert fed == (1 << 20) // 4096 + 1  # refused on the first piece past 1 MiB held, not later
    # Event ends straddling the pieces are still found.
    tap = SSETap(strip_usage_chunk=False)
    assert tap.feed(b'data: {"a":1}\n') == b""
    assert tap.feed(b"\n") == b'data: {"a":1}\n\n'
    assert tap.feed(b'data: {"b":2}\r\n\r') == b""
    assert tap.feed(b"\n") == b'data: {"b":2}\r\n\r\n'


# -- the Redis store ----------------------------------------------------------------------------


async def test_fail_open_keeps_the_limits_this_process_can_check(spawn_redis: Callable[[], Any]) -> None:
    server = spawn_redis()
    store = RedisQuotaStore.from_url(server.url, fail_policy="open", timeout_s=0.3, prefix="open-test")
    try:
        who = Principal(
            tenant="acme", subject="k1", tenant_limits=Limits(max_concurrent=3, tokens_per_day=1000)
        )
        server.stop()
        results = await asyncio.wait_for(asyncio.gather(*(store.admit(who, 10) for _ in range(10))), 30)
        held = [r for r in results if isinstance(r, Admission)]
        assert len(held) == 3  # not 10: the concurrency limit holds without Redis
        assert all(isinstance(r, Rejection) and r.reason == "concurrency" for r in results if r not in held)
        too_big = await store.admit(who, 5000)  # larger than the whole day's budget
        assert isinstance(too_big, Rejection)
        for admission in held:
            await store.settle(admission.reservation, 5)
        again = await store.admit(who, 10)
        assert isinstance(again, Admission)  # the slots came back
        assert store.up is False and store.errors > 0
    finally:
        await store.close()


async def test_a_script_error_is_never_admitted_unaccounted(redis_url: str) -> None:
    store = RedisQuotaStore.from_url(redis_url, fail_policy="open", prefix="script-test")
    try:
        who = Principal(tenant="acme", subject="k1", tenant_limits=Limits(tokens_per_day=1000))
        # A counter that is no number makes the script fail inside Redis: not an outage.
        plan = plan_admission(who, 1, time.time())
        day = next(c.key for c in plan.checks if c.reason == "tokens_per_day" and c.scope == "tenant")
        await store._client.set(store.key("acme", day), "not-a-number")
        result = await store.admit(who, 10)
        assert isinstance(result, Rejection)
        assert result.reason == "store_unavailable"
    finally:
        await store._client.delete(store.key("acme", day))
        await store.close()


async def test_a_restarted_redis_costs_no_request_an_error(spawn_redis: Callable[[], Any]) -> None:
    server = spawn_redis()
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    store = RedisQuotaStore.from_url(server.url, prefix="restart-test")
    who = Principal(tenant="acme", subject="k1", tenant_limits=Limits(max_concurrent=100))
    try:
        # Ten pooled connections, all stale once Redis restarts.
        first = await asyncio.gather(*(store.admit(who, 1) for _ in range(10)))
        assert all(isinstance(r, Admission) for r in first)
        server.stop()
        again = start_redis(port)
        try:
            results = await asyncio.gather(*(store.admit(who, 1) for _ in range(20)))
            refused = [r for r in results if isinstance(r, Rejection)]
            assert refused == []
        finally:
            again.stop()
    finally:
        await store.close()


# -- the cap fits the model -----------------------------------------------------------------------


def test_the_default_cap_fits_the_models_context() -> None:
    small = RouteTable.of([Route("tiny", ("http://10.0.0.1:8000",), max_model_len=512)])
    doc = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}]}
    result = plan_request(doc, jsoncodec.dumps(doc), "chat", WHO, small.resolve("tiny"), 1024)
    assert isinstance(result, Plan)
    prompt = result.prompt_bound
    assert result.cap == 512 - prompt  # not the gateway's 1024, which the engine would refuse
    assert jsoncodec.loads(result.body)["max_tokens"] == result.cap
    assert result.reserve <= 512
    # A client's own cap is the client's: the engine answers for it.
    own = plan_request({**doc, "max_tokens": 2000}, b"", "chat", WHO, small.resolve("tiny"), 1024)
    assert isinstance(own, Plan) and own.cap == 2000
    # A large context leaves the default as it is.
    big = RouteTable.of([Route("big", ("http://10.0.0.1:8000",), max_model_len=32768)])
    doc = {**doc, "model": "big"}
    result = plan_request(doc, jsoncodec.dumps(doc), "chat", WHO, big.resolve("big"), 1024)
    assert isinstance(result, Plan) and result.cap == 1024


def test_the_route_sources_know_the_context() -> None:
    from respublica.serving.gateway.routing.file_source import parse_routes
    from respublica.serving.gateway.routing.k8s_source import table_from_deployments

    routes = parse_routes({"models": [{"name": "x", "endpoints": ["http://a:1"], "max_model_len": 512}]})
    found = routes.resolve("x")
    assert found is not None and found.route.max_model_len == 512
    deployment = {
        "metadata": {"namespace": "ai", "name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"model": {"servedName": "x"}, "engine": {"maxModelLen": 512}},
        "status": {"phase": "Ready", "endpoint": "http://x.ai:8000"},
    }
    resolved = table_from_deployments([deployment]).resolve("x")
    assert resolved is not None and resolved.route.max_model_len == 512
