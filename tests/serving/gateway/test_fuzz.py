"""Property-based fuzz of the OpenAI surface from its OpenAPI document (docs/openapi/openai-surface.json):
bodies built from each operation's schema, every field sometimes valid, sometimes any JSON value
(huge and negative numbers, deep nesting, wrong types), sometimes not JSON at all. The gateway may
refuse anything, but never answers 500, never an error that is not OpenAI-shaped, never a 5xx
that is not the model's (502/503/504 with an upstream or availability code), and logs no traceback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.gateway_harness import ALPHA_KEY, Stack

DOC = json.loads((Path(__file__).parents[3] / "docs" / "openapi" / "openai-surface.json").read_text())
SCHEMAS = DOC["components"]["schemas"]
POSTS = {path: ops["post"] for path, ops in DOC["paths"].items() if "post" in ops}
CASES = 1050
# 5xx the gateway passes on or answers for the model's sake (docs/gateway.md, Errors).
UPSTREAM_5XX = {
    "upstream_error",
    "upstream_broken",
    "upstream_invalid",
    "upstream_timeout",
    "upstream_unreachable",
    "upstream_too_large",
    "model_not_ready",
    "store_unavailable",
}
MODELS = st.sampled_from(["m", "m", "m", "m-waking", "m-private", "nope", "m:sql", "m" * 300, ""])

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**53, 2**63 - 1, 2**63, 2**64, 10**12, 10**13]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def valid(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value the schema allows (the cases the document promises to take)."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "oneOf" in schema:
        return st.one_of(*(valid(s) for s in schema["oneOf"]))
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "integer":
        return st.integers(
            min_value=schema.get("minimum", -(2**31)), max_value=min(schema.get("maximum", 2**31), 64)
        )
    if kind == "number":
        return st.floats(min_value=0, max_value=2, allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=20)
    if kind == "array":
        return st.lists(valid(schema.get("items", {})), min_size=schema.get("minItems", 0), max_size=3)
    if kind == "object":
        props = schema.get("properties", {})
        return st.fixed_dictionaries(
            {k: valid(props[k]) for k in schema.get("required", [])},
            optional={k: valid(v) for k, v in props.items() if k not in schema.get("required", [])},
        )
    return json_value


def body_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    props: dict[str, Any] = schema["properties"]
    field = st.one_of(*(st.tuples(st.just(k), valid(v) | json_value) for k, v in props.items()))
    mostly_valid = st.builds(
        lambda base, model, extra, deep: {**base, **dict(extra), "model": model, **deep},
        valid(schema),
        MODELS,
        st.lists(field, max_size=3),
        st.sampled_from(
            [{}, {}, {}, {"tools": [nested(900)]}, {"messages": [{"role": "user", "content": nested(200)}]}]
        ),
    )
    return st.one_of(mostly_valid, mostly_valid, json_value)


def test_the_openai_surface_takes_anything_without_a_5xx_of_its_own(
    make_stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stack: Stack = make_stack()
    seen: dict[int, int] = {}
    client = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {ALPHA_KEY}"}, timeout=30)
    cases = st.one_of(
        *(
            st.tuples(
                st.just(path),
                body_for(
                    SCHEMAS[
                        op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                    ]
                ).map(lambda b: json.dumps(b).encode()),
            )
            for path, op in POSTS.items()
        ),
        st.tuples(st.sampled_from(sorted(POSTS)), st.binary(max_size=64)),  # not JSON at all
    )

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(cases)
    def one(case: tuple[str, bytes]) -> None:
        path, raw = case
        response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code != 500, response.text
        if response.status_code == 200:
            return
        error = response.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str)
        if response.status_code >= 500:
            assert error["code"] in UPSTREAM_5XX, error

    with caplog.at_level(logging.INFO):
        try:
            one()
        finally:
            client.close()
    total = sum(seen.values())
    fives = {k: v for k, v in seen.items() if k >= 500}
    print(f"\nfuzzed {total} cases: statuses {dict(sorted(seen.items()))}; 5xx {fives} (all the model's)")
    assert total >= 1000
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("respublica")]
