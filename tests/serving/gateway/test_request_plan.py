"""The request plan without HTTP: access, cap, body rewrite and reservation size (routes/plan.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from respublica.serving.gateway import jsoncodec
from respublica.serving.gateway.contracts import Limits, Principal
from respublica.serving.gateway.errors import GatewayError
from respublica.serving.gateway.quota.estimate import Endpoint, chat_prompt_bound
from respublica.serving.gateway.routes.plan import MAX_N, Plan, may_use, plan_request
from respublica.serving.gateway.routing.table import Route, RouteTable

TABLE = RouteTable.of(
    [
        Route("llama", ("http://10.0.0.1:8000",), adapters=("sql",)),
        Route("private", ("http://10.0.0.2:8000",), tenants=("acme",)),
        Route("cold", ()),  # no endpoint ready
        Route("bge", ("http://10.0.0.3:8000",)),
    ]
)
GATEWAY_CAP = 1024
CHAT = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}


def caller(
    tenant: str = "acme",
    models: tuple[str, ...] = ("*",),
    key_models: tuple[str, ...] | None = None,
    tenant_cap: int | None = None,
    key_cap: int | None = None,
) -> Principal:
    key = Limits(allowed_models=key_models or ("*",), default_max_tokens=key_cap)
    return Principal(
        tenant=tenant,
        subject="k1",
        tenant_limits=Limits(allowed_models=models, default_max_tokens=tenant_cap),
        key_limits=key if (key_models is not None or key_cap is not None) else None,
    )


def plan(
    doc: dict[str, Any], endpoint: Endpoint = "chat", principal: Principal | None = None
) -> Plan | GatewayError:
    raw = jsoncodec.dumps(doc)
    return plan_request(doc, raw, endpoint, principal or caller(), TABLE.resolve(doc["model"]), GATEWAY_CAP)


def ok(doc: dict[str, Any], endpoint: Endpoint = "chat", principal: Principal | None = None) -> Plan:
    result = plan(doc, endpoint, principal)
    assert isinstance(result, Plan), result
    return result


def refused(
    doc: dict[str, Any], endpoint: Endpoint = "chat", principal: Principal | None = None
) -> GatewayError:
    result = plan(doc, endpoint, principal)
    assert isinstance(result, GatewayError), result
    return result


def sent(p: Plan) -> dict[str, Any]:
    doc = jsoncodec.loads(p.body)
    assert isinstance(doc, dict)
    return doc


# -- access --------------------------------------------------------------------------------------


def test_an_unknown_model_is_404_before_any_field_is_read() -> None:
    error = refused({"model": "nope", "messages": "not a list", "n": 0})
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert error.type == "not_found_error"


@pytest.mark.parametrize(
    ("model", "principal"),
    [
        ("private", caller(tenant="other")),  # the route's tenant list
        ("llama", caller(models=("bge",))),  # the tenant's allowed models
        ("llama", caller(key_models=("bge",))),  # the key narrows the tenant
        ("llama:sql", caller(models=("bge",))),  # an adapter of a model the tenant may not use
    ],
)
def test_a_model_the_caller_may_not_use_is_the_same_404_as_one_that_does_not_exist(
    model: str, principal: Principal
) -> None:
    """A tenant can not learn which private models exist: the answer is byte for byte the 404."""
    error = refused({**CHAT, "model": model}, principal=principal)
    unknown = plan_request({**CHAT, "model": model}, b"", "chat", principal, None, 1)
    assert isinstance(unknown, GatewayError)
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert error.body() == unknown.body() and error.headers == unknown.headers == []
    assert getattr(error, "reason", None) == "model_not_allowed"  # the operator still sees why


def test_access_comes_before_503_so_a_private_models_readiness_stays_private() -> None:
    private_cold = RouteTable.of([Route("cold", (), tenants=("acme",))])
    doc = {**CHAT, "model": "cold"}
    error = plan_request(doc, b"", "chat", caller(tenant="other"), private_cold.resolve("cold"), 1)
    assert isinstance(error, GatewayError) and error.status == 404
    error = refused(doc)
    assert (error.status, error.code) == (503, "model_not_ready")


def test_an_adapter_is_allowed_by_its_own_name_or_by_its_base() -> None:
    assert ok({**CHAT, "model": "llama:sql"}, principal=caller(models=("llama",))).model == "llama:sql"
    assert ok({**CHAT, "model": "llama:sql"}, principal=caller(models=("llama:sql",))).route.name == "llama"


def test_may_use_is_the_one_access_rule() -> None:
    llama = TABLE.routes["llama"]
    assert may_use(caller(), "llama", llama)
    assert may_use(caller(models=("llama",)), "llama:sql", llama)
    assert not may_use(caller(models=("llama:sql",)), "llama", llama)  # an adapter grant is not the base
    assert not may_use(caller(tenant="other"), "private", TABLE.routes["private"])
    assert may_use(caller(tenant="acme", models=("private",)), "private", TABLE.routes["private"])


# -- cap and body --------------------------------------------------------------------------------


def test_the_clients_cap_is_kept_and_its_bytes_are_sent_unchanged() -> None:
    doc = {**CHAT, "max_tokens": 7}
    raw = jsoncodec.dumps(doc)
    p = plan_request(doc, raw, "chat", caller(), TABLE.resolve("llama"), GATEWAY_CAP)
    assert isinstance(p, Plan)
    assert p.cap == 7 and p.body is raw and not p.stream and not p.strip_usage


def test_chat_prefers_max_completion_tokens() -> None:
    assert ok({**CHAT, "max_tokens": 7, "max_completion_tokens": 9}).cap == 9


@pytest.mark.parametrize(
    ("principal", "cap"),
    [
        (caller(), GATEWAY_CAP),
        (caller(tenant_cap=300), 300),
        (caller(tenant_cap=300, key_cap=50), 50),
    ],
)
def test_without_a_cap_the_key_then_tenant_then_gateway_default_is_written(
    principal: Principal, cap: int
) -> None:
    p = ok(dict(CHAT), principal=principal)
    assert p.cap == cap
    assert sent(p) == {**CHAT, "max_tokens": cap}


def test_a_stream_asks_for_usage_and_hides_it_from_a_client_that_did_not() -> None:
    doc = {**CHAT, "max_tokens": 5, "stream": True, "stream_options": {"continuous_usage_stats": False}}
    p = ok(doc)
    assert p.stream and p.strip_usage
    assert sent(p)["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    assert doc["stream_options"] == {"continuous_usage_stats": False}  # the caller's dict untouched


def test_a_stream_whose_client_asked_for_usage_is_sent_as_is() -> None:
    doc = {**CHAT, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    raw = jsoncodec.dumps(doc)
    p = plan_request(doc, raw, "chat", caller(), TABLE.resolve("llama"), GATEWAY_CAP)
    assert isinstance(p, Plan) and p.stream and not p.strip_usage and p.body is raw


def test_the_plan_writes_nothing_into_the_parsed_body_and_can_not_be_changed() -> None:
    doc = {**CHAT, "stream": True}
    before = jsoncodec.dumps(doc)
    p = ok(doc)
    assert jsoncodec.dumps(doc) == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.cap = 1  # type: ignore[misc]


# -- reservation ---------------------------------------------------------------------------------


def test_the_reservation_is_the_prompt_bound_plus_cap_times_sequences() -> None:
    doc = {**CHAT, "max_tokens": 10, "n": 3}
    p = ok(doc)
    assert p.prompt_bound == chat_prompt_bound(doc)
    assert p.reserve == p.prompt_bound + 10 * 3


def test_the_default_cap_is_what_is_reserved_for() -> None:
    p = ok(dict(CHAT), principal=caller(tenant_cap=100))
    assert p.reserve == chat_prompt_bound(CHAT) + 100


def test_embeddings_reserve_their_input_and_no_output() -> None:
    p = ok({"model": "bge", "input": ["ab", "cd"]}, "embeddings")
    assert p.cap == 0 and p.reserve == p.prompt_bound > 0
    assert p.body == jsoncodec.dumps({"model": "bge", "input": ["ab", "cd"]})


# -- bad fields: 400 naming the field ------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "endpoint", "param"),
    [
        ({**CHAT, "n": 0}, "chat", "n"),
        ({**CHAT, "n": MAX_N + 1}, "chat", "n"),
        ({**CHAT, "max_tokens": -1}, "chat", "max_tokens"),
        ({**CHAT, "max_completion_tokens": True}, "chat", "max_completion_tokens"),
        ({**CHAT, "messages": []}, "chat", "messages"),
        ({"model": "llama", "prompt": []}, "completions", "prompt"),
        ({"model": "bge", "input": "x", "stream": True}, "embeddings", "stream"),
        ({"model": "bge", "input": 5}, "embeddings", "input"),
    ],
)
def test_a_bad_field_is_400_naming_it(doc: dict[str, Any], endpoint: Endpoint, param: str) -> None:
    error = refused(doc, endpoint)
    assert (error.status, error.code, error.param) == (400, "invalid_value", param)
    assert error.type == "invalid_request_error"


# -- the model's task ----------------------------------------------------------------------------

TASKED = RouteTable.of(
    [
        Route("smol", ("http://10.0.0.4:8000",), task="generate"),
        Route("minilm", ("http://10.0.0.5:8000",), task="embed"),
        Route("private-minilm", ("http://10.0.0.6:8000",), tenants=("other",), task="embed"),
    ]
)
EMBED = {"model": "minilm", "input": ["a cat on a mat"]}


def tasked(
    doc: dict[str, Any], endpoint: Endpoint, principal: Principal | None = None
) -> Plan | GatewayError:
    raw = jsoncodec.dumps(doc)
    return plan_request(doc, raw, endpoint, principal or caller(), TASKED.resolve(doc["model"]), GATEWAY_CAP)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_text_generation_from_an_embeddings_model_is_400_from_the_gateway(endpoint: Endpoint) -> None:
    doc = {**CHAT, "model": "minilm"} if endpoint == "chat" else {"model": "minilm", "prompt": "hi"}
    error = tasked(doc, endpoint)
    assert isinstance(error, GatewayError)
    assert (error.status, error.code, error.param) == (400, "model_task_mismatch", "model")
    assert str(error) == "model 'minilm' is an embeddings model: it serves /v1/embeddings only"


def test_embeddings_from_a_chat_model_is_400_from_the_gateway() -> None:
    error = tasked({**EMBED, "model": "smol"}, "embeddings")
    assert isinstance(error, GatewayError)
    assert (error.status, error.code, error.param) == (400, "model_task_mismatch", "model")
    assert "model 'smol' does not serve embeddings" in str(error) and "/v1/chat/completions" in str(error)


def test_each_model_gets_the_requests_of_its_task() -> None:
    assert isinstance(tasked(EMBED, "embeddings"), Plan)
    assert isinstance(tasked({**CHAT, "model": "smol"}, "chat"), Plan)
    assert isinstance(tasked({"model": "smol", "prompt": "hi"}, "completions"), Plan)


def test_a_route_without_a_task_leaves_the_answer_to_the_engine() -> None:
    """A routes file that names no task (the format before tasks) sends every kind on, as before."""
    assert Route("x", ("http://e",)).task is None
    assert isinstance(plan({"model": "bge", "input": ["a"]}, "embeddings"), Plan)
    assert isinstance(plan({**CHAT, "model": "bge"}, "chat"), Plan)


def test_access_is_decided_before_the_task() -> None:
    """A private model's kind is not told to a caller who may not use it: 404, not 400."""
    error = tasked({**CHAT, "model": "private-minilm"}, "chat")
    assert isinstance(error, GatewayError) and error.status == 404
