"""What the gateway will do with one request, decided before anything is reserved or sent.

`plan_request` is pure: from the parsed body, the caller, the route its model resolved to and the
gateway's default cap it returns either a `Plan` (access granted, the output cap, the body to send
upstream, the tokens to reserve) or the OpenAI-shaped `GatewayError` to answer with. No I/O, no
clock, its arguments untouched, so every rule here is tested without HTTP
(tests/serving/gateway/test_request_plan.py). The endpoint (routes/openai.py) only carries it out.

The plan comes before admission on purpose (contracts.py states the order): a request for a model
that does not exist, that the caller may not use, that can not serve now, or whose body is invalid
is answered without reserving tokens, taking a concurrency slot or counting against the requests per
minute, and without a round trip to the quota store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from respublica.serving.gateway import jsoncodec
from respublica.serving.gateway.contracts import Principal
from respublica.serving.gateway.errors import GatewayError
from respublica.serving.gateway.quota.arithmetic import MAX_RESERVATION
from respublica.serving.gateway.quota.estimate import Endpoint, EstimateError, reservation_tokens
from respublica.serving.gateway.routes.body import positive_int
from respublica.serving.gateway.routing.table import Resolved, Route

MAX_N = 128  # sequences per request: bounds the reservation a single request can ask for
# Output tokens per sequence a client may ask for: above any model's context today, and small
# enough that cap x n x prompts stays a number every store counts exactly (quota/arithmetic.py).
MAX_OUTPUT_TOKENS = 10_000_000


def may_use(principal: Principal, name: str, route: Route) -> bool:
    """The access rule, spelled only here (requests and GET /v1/models both ask it): the route lets
    the caller's tenant in, and the allowed models of the tenant and of the key name the model, or
    for an adapter (`<base>:<adapter>`) its base model."""
    return route.allows_tenant(principal.tenant) and (
        principal.allows_model(name) or (name != route.name and principal.allows_model(route.name))
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """A request the caller may make, ready to be admitted and proxied."""

    model: str  # the name the client asked for (a served name or `<base>:<adapter>`)
    route: Route
    cap: int  # output tokens per sequence written or passed upstream; 0 for embeddings
    stream: bool
    # The gateway asked for `stream_options.include_usage` the client did not ask for: the usage
    # chunk is read for the settlement and removed before the client sees it.
    strip_usage: bool
    body: bytes  # what is sent upstream: the client's bytes, or re-encoded where the gateway wrote into it
    reserve: int  # tokens admission holds: the prompt's upper bound plus cap x sequences
    prompt_bound: int  # the prompt's share of `reserve`, charged when a stream never reports usage


def model_not_found(model: str) -> GatewayError:
    return GatewayError(404, "model_not_found", f"model '{model}' does not exist", param="model")


class ModelHidden(GatewayError):
    """A model the caller may not use: answered exactly as one that does not exist, so a tenant
    cannot learn which private models there are. `reason` tells the operator (spans, metrics)."""

    reason = "model_not_allowed"

    def __init__(self, model: str) -> None:
        same = model_not_found(model)
        super().__init__(same.status, same.code, same.message, param=same.param)


def plan_request(
    doc: Mapping[str, Any],
    raw: bytes,
    endpoint: Endpoint,
    principal: Principal,
    resolved: Resolved | None,
    default_max_tokens: int,
) -> Plan | GatewayError:
    """The plan for a parsed body (`doc`, parsed from `raw`), or the error to answer with.

    The checks run in this order: 404 unknown model or one the caller may not use (the same answer,
    so a private model's existence is not told), 503 not ready, then 400 for a model that does not
    serve this endpoint (an embeddings model asked for chat, or the reverse), then 400 for the
    fields. Access comes first so a private model's readiness and kind stay private too."""
    try:
        return _plan(doc, raw, endpoint, principal, resolved, default_max_tokens)
    except GatewayError as exc:
        return exc
    except RecursionError:  # the estimator or the re-encoding went as deep as the JSON does
        return GatewayError(400, "invalid_body", "request body is nested too deeply")


def _task_mismatch(model: str, endpoint: Endpoint) -> str:
    """Why this model does not serve this endpoint, and which endpoint it does serve."""
    if endpoint == "embeddings":
        return (
            f"model '{model}' does not serve embeddings: it generates text "
            "(/v1/chat/completions, /v1/completions)"
        )
    return f"model '{model}' is an embeddings model: it serves /v1/embeddings only"


def _plan(
    doc: Mapping[str, Any],
    raw: bytes,
    endpoint: Endpoint,
    principal: Principal,
    resolved: Resolved | None,
    default_max_tokens: int,
) -> Plan:
    model: str = doc["model"]
    if resolved is None:
        raise model_not_found(model)
    route = resolved.route
    if not may_use(principal, model, route):
        raise ModelHidden(model)
    if not route.endpoints:
        raise GatewayError(
            503, "model_not_ready", f"model '{model}' is not ready to serve; try again later", param="model"
        )

    if route.task is not None and (endpoint == "embeddings") != (route.task == "embed"):
        raise GatewayError(400, "model_task_mismatch", _task_mismatch(model, endpoint), param="model")

    written: dict[str, Any] = {}  # fields the gateway writes into the body it sends
    strip_usage = False
    stream = doc.get("stream") is True
    cap = 0
    n = positive_int(doc, "n", MAX_N) or 1
    positive_int(doc, "best_of", MAX_N)  # completions: that many sequences are generated
    if endpoint != "embeddings":
        # Either field caps the output (vLLM takes both, on both endpoints): the larger bounds it.
        given = [
            c
            for c in (
                positive_int(doc, "max_tokens", MAX_OUTPUT_TOKENS),
                positive_int(doc, "max_completion_tokens", MAX_OUTPUT_TOKENS),
            )
            if c
        ]
        requested = max(given) if given else None
        if requested is None:
            # A request without a cap could hold a whole context of output: write the key's,
            # the tenant's or the gateway's default, and reserve for that; never more than the
            # model's context leaves after the prompt's bound (the engine refuses a larger cap).
            cap = principal.default_max_tokens or default_max_tokens
            if route.max_model_len is not None:
                cap = min(cap, max(1, route.max_model_len - _prompt_bound(doc, endpoint)))
            written["max_tokens"] = cap
        else:
            cap = requested
        if stream:
            options = doc.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                # The settlement needs the model's own count: ask for it, hide it from the client.
                written["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
                strip_usage = True
    elif stream:
        raise GatewayError(400, "invalid_value", "embeddings can not be streamed", param="stream")
    try:
        # The policy side's bound: prompt tokens from the text's size, plus cap x sequences.
        reserve = reservation_tokens(doc, endpoint, cap)
    except EstimateError as exc:
        raise GatewayError(400, "invalid_value", exc.message, param=exc.param) from None
    if reserve > MAX_RESERVATION:
        raise GatewayError(
            400,
            "request_too_large",
            f"this request may use up to {reserve} tokens, more than the {MAX_RESERVATION} any request may",
        )
    return Plan(
        model=model,
        route=route,
        cap=cap,
        stream=stream,
        strip_usage=strip_usage,
        body=jsoncodec.dumps({**doc, **written}) if written else raw,
        reserve=reserve,
        prompt_bound=max(0, reserve - cap * n),
    )


def _prompt_bound(doc: Mapping[str, Any], endpoint: Endpoint) -> int:
    """The prompt's bound alone (the reservation with no output); 0 where the body is bad (the
    reservation below answers that)."""
    try:
        return reservation_tokens({**doc, "max_tokens": None, "max_completion_tokens": None}, endpoint, 0)
    except EstimateError:
        return 0
