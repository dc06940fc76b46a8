"""Spans (GenAI semantic conventions, no prompt text), W3C context, /metrics, and logs without secrets."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.gateway_harness import ALPHA_KEY, BETA_KEY, Stack, eventually

SECRET_PROMPT = "the launch code is zebra-cobalt-4471"
MESSAGES = [{"role": "user", "content": SECRET_PROMPT}]


def api(stack: Stack, key: str = ALPHA_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=20)


def spans(stack: Stack, name_prefix: str = "") -> list[Any]:
    return [s for s in stack.gateway.exporter.get_finished_spans() if s.name.startswith(name_prefix)]


def all_attribute_text(stack: Stack) -> str:
    return " ".join(str(v) for s in spans(stack) for v in (s.attributes or {}).values())


def test_chat_span_has_genai_attributes_and_no_prompt(stack: Stack) -> None:
    api(stack).chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    (span,) = spans(stack, "chat m")
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "respublica"
    assert attrs["gen_ai.request.model"] == "m"
    assert attrs["gen_ai.request.max_tokens"] == 3
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("length",)
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (5, 3)
    assert attrs["server.address"] == "127.0.0.1" and "error.type" not in attrs
    assert SECRET_PROMPT not in all_attribute_text(stack) and "zebra" not in all_attribute_text(stack)


def test_stream_and_error_spans(stack: Stack) -> None:
    list(api(stack).completions.create(model="m", prompt=SECRET_PROMPT, max_tokens=2, stream=True))
    eventually(lambda: spans(stack, "text_completion m"))
    (stream_span,) = spans(stack, "text_completion m")
    attrs = dict(stream_span.attributes or {})
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (5, 2)
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("length",)
    with pytest.raises(openai.NotFoundError):  # a model beta may not use: the client sees a 404
        api(stack, BETA_KEY).chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(openai.APIStatusError):
        api(stack).embeddings.create(model="m-refused", input=SECRET_PROMPT)
    errors = {s.name: dict(s.attributes or {}).get("error.type") for s in spans(stack)}
    assert errors["chat m"] == "model_not_allowed"  # the operator sees why
    assert errors["embeddings m-refused"] == "upstream_unreachable"
    assert SECRET_PROMPT not in all_attribute_text(stack)


def test_trace_context_comes_in_and_goes_upstream(stack: Stack) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    api(stack).chat.completions.create(model="m", messages=MESSAGES, max_tokens=1, extra_headers=caller)
    (span,) = spans(stack, "chat")
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    sent = stack.upstream.seen[-1].headers["traceparent"]
    assert sent.split("-")[1] == trace_id and sent.split("-")[2] == f"{span.context.span_id:016x}"
    assert "authorization" not in stack.upstream.seen[-1].headers  # the caller's key never goes upstream


def test_content_is_recorded_only_when_opted_in(make_stack: Any) -> None:
    stack = make_stack(telemetry={"record_content": True})
    api(stack).chat.completions.create(model="m", messages=MESSAGES, max_tokens=1)
    (span,) = spans(stack, "chat")
    assert SECRET_PROMPT in str(dict(span.attributes or {})["gen_ai.input.messages"])
    assert "w0" in str(dict(span.attributes or {})["gen_ai.output.messages"])


@pytest.fixture
def stack(make_stack: Any) -> Stack:
    """The gateway with /metrics open on its public port, which these tests scrape."""
    stack: Stack = make_stack(telemetry={"public_metrics": True})
    return stack


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(stack.url + "/metrics", timeout=10).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_token_guards_metrics(make_stack: Any) -> None:
    token = "scrape-token-0123456789"
    stack = make_stack(telemetry={"metrics_token": token})
    assert httpx.get(stack.url + "/metrics", timeout=10).status_code == 401
    wrong = httpx.get(stack.url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    right = httpx.get(stack.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert right.status_code == 200 and list(text_string_to_metric_families(right.text))


def test_metrics_are_not_on_the_public_port_by_default(make_stack: Any) -> None:
    # Every tenant's and model's names: without admin_port, served only when guarded or opted in.
    stack = make_stack()
    api(stack).chat.completions.create(model="m", messages=MESSAGES, max_tokens=1)
    assert httpx.get(stack.url + "/metrics", timeout=10).status_code == 404
    assert stack.gateway.app.state.gateway.metrics is not None  # still counted, for whoever serves them


def test_underestimated_usage_is_charged_and_counted(stack: Stack) -> None:
    # The upstream reports far more prompt tokens than the gateway's bound (a misconfigured estimator).
    api(stack).chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=2, extra_body={"test_prompt_tokens": 100_000}
    )
    ((rid, used),) = stack.quota.settled
    assert used > stack.quota.reserved[rid] and used == 100_000 + 2
    name = "respublica_gateway_reservation_underestimates_total"
    assert value(scrape(stack), name, tenant="alpha", model="m") == 1


def test_metrics_parse_and_move(stack: Stack) -> None:
    before = scrape(stack)
    api(stack).chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    list(api(stack).chat.completions.create(model="m", messages=MESSAGES, max_tokens=2, stream=True))
    eventually(lambda: len(stack.ledger.records) == 2)
    with pytest.raises(openai.NotFoundError):
        api(stack).chat.completions.create(model="nope", messages=MESSAGES)
    after = scrape(stack)
    p = "respublica_gateway_"
    ok = {"tenant": "alpha", "model": "m"}
    assert (
        value(after, p + "requests_total", status="200", **ok)
        - value(before, p + "requests_total", status="200", **ok)
        == 2
    )
    assert value(after, p + "tokens_total", kind="input", **ok) == 10
    assert value(after, p + "tokens_total", kind="output", **ok) == 5
    assert value(after, p + "request_duration_seconds_count", **ok) == 2
    assert value(after, p + "time_to_first_token_seconds_count", **ok) == 1
    assert (
        value(after, p + "rejections_total", tenant="alpha", model="_unknown", reason="model_not_found") == 1
    )
    assert value(after, p + "in_flight_requests", **ok) == 0
    assert (p + "route_conflicts", ()) in after


def test_no_key_or_prompt_in_logs(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api(stack).chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
    list(api(stack).chat.completions.create(model="m", messages=MESSAGES, stream=True))
    for behavior in ("fail", "reject", "break"):
        with pytest.raises(openai.APIError):
            list(
                api(stack).chat.completions.create(
                    model="m",
                    messages=MESSAGES,
                    stream=behavior == "break",
                    extra_body={"test_behavior": behavior},
                )
            )
    with pytest.raises(openai.AuthenticationError):
        api(stack, key=ALPHA_KEY + "x").chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(openai.APIStatusError):
        api(stack).chat.completions.create(model="m-refused", messages=MESSAGES)
    text = caplog.text + " ".join(str(r.args) for r in caplog.records)
    gateway_lines = [r.getMessage() for r in caplog.records if r.name.startswith("respublica")]
    assert any("answered 500" in line for line in gateway_lines)  # failures are logged, without secrets
    assert any("broke off the response" in line for line in gateway_lines)
    for secret in (ALPHA_KEY, BETA_KEY, SECRET_PROMPT, "zebra-cobalt"):
        assert secret not in text


def test_the_exporting_provider_takes_its_sampler_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/gateway.md tells operators to sample with OTEL_TRACES_SAMPLER: the provider the gateway
    builds for OTLP export must read it (the SDK's TracerProvider does, when given no sampler)."""
    from opentelemetry.sdk.trace.sampling import ParentBased

    from respublica.serving.gateway.telemetry.tracing import otlp_tracer_provider

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    provider = otlp_tracer_provider("http://127.0.0.1:9", "respublica-test")
    try:
        sampler = provider.sampler
        assert isinstance(sampler, ParentBased)
        assert sampler.get_description().startswith("ParentBased{root:TraceIdRatioBased{0.1}")
    finally:
        provider.shutdown()
