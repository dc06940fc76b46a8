"""Structural defaulting: what the API server does to an object before it validates it.

Applied to plain data with the CRD's openAPIV3Schema (or a node of it): a null in a field that is not
`nullable` is dropped, then every absent property that has a `default` gets it, recursively, also
inside a section that was itself just defaulted (`engine: {}` gains `dtype: auto` and the rest).
`respublica validate` uses it so the cross-field rules see what the API server's CEL rules would see.
"""

from __future__ import annotations

import copy
from typing import Any


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """A defaulted copy of `value`; the input is left untouched. Values of the wrong type pass as they are."""
    if isinstance(value, dict) and schema.get("type") == "object":
        properties: dict[str, Any] | None = schema.get("properties")
        if properties is not None:
            out: dict[str, Any] = {}
            for key, item in value.items():
                sub = properties.get(key)
                if sub is None:
                    out[key] = copy.deepcopy(item)
                elif item is None and not sub.get("nullable", False):
                    continue
                else:
                    out[key] = apply_defaults(sub, item)
            for key, sub in properties.items():
                if key not in out and "default" in sub:
                    out[key] = apply_defaults(sub, copy.deepcopy(sub["default"]))
            return out
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return {key: apply_defaults(extra, item) for key, item in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return copy.deepcopy(value)
