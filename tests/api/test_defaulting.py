"""Structural defaulting as the API server does it: the emulation the CEL checks rely on."""

from __future__ import annotations

from typing import Any

from respublica.api.crd import openapi_schema
from respublica.api.defaulting import apply_defaults

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "section": {
            "type": "object",
            "default": {},
            "properties": {
                "count": {"type": "integer", "default": 1},
                "name": {"type": "string", "nullable": True},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "items": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"x": {"type": "integer", "default": 7}}},
                },
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "optional": {
            "type": "object",
            "nullable": True,
            "properties": {"n": {"type": "integer", "default": 2}},
        },
    },
}


def test_absent_section_is_created_and_filled() -> None:
    assert apply_defaults(SCHEMA, {}) == {"section": {"count": 1}}


def test_nulls_pruned_unless_nullable_then_defaulted() -> None:
    out = apply_defaults(SCHEMA, {"section": {"count": None, "name": None, "mode": None}})
    assert out == {"section": {"count": 1, "name": None}}


def test_list_items_and_maps_defaulted_inside() -> None:
    out = apply_defaults(SCHEMA, {"section": {"items": [{}, {"x": 3}], "labels": {"a": "b"}}})
    assert out["section"]["items"] == [{"x": 7}, {"x": 3}]
    assert out["section"]["labels"] == {"a": "b"}


def test_nullable_section_kept_null_and_unknown_fields_kept() -> None:
    out = apply_defaults(SCHEMA, {"optional": None, "other": 1})
    assert out == {"section": {"count": 1}, "optional": None, "other": 1}


def test_input_untouched_and_wrong_types_pass_through() -> None:
    data: dict[str, Any] = {"section": "not a mapping"}
    assert apply_defaults(SCHEMA, data) == {"section": "not a mapping"}
    inner: dict[str, Any] = {"section": {}}
    apply_defaults(SCHEMA, inner)
    assert inner == {"section": {}}


def test_modeldeployment_spec_defaults() -> None:
    spec = apply_defaults(
        openapi_schema()["properties"]["spec"], {"model": {"source": "pvc://a/b", "servedName": "b"}}
    )
    assert spec["engine"] == {
        "dtype": "auto",
        "enforceEager": False,
        "gpuMemoryUtilization": 0.9,
        "tensorParallelSize": 1,
    }
    assert spec["resources"] == {"cpu": "8", "gpus": 1, "memory": "64Gi"}
    assert spec["scaling"]["minReplicas"] == 1 and spec["scaling"]["maxReplicas"] == 1
    assert spec["access"] == {"tenants": ["*"]}
    assert "lora" not in spec and "cache" not in spec
