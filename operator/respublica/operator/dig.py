"""Reading nested fields of Kubernetes objects as the API returns them (plain dicts, any field absent)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def dig(obj: Any, *path: str) -> Any:
    """The value at `path` inside nested mappings, or None where a step is missing or not a mapping."""
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj
