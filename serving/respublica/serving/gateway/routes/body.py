"""The few fields of an OpenAI request body the gateway reads, checked (400 names the field)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from respublica.serving.gateway import jsoncodec
from respublica.serving.gateway.errors import GatewayError

MAX_MODEL_NAME = 256  # a served name, or `<base>:<adapter>`


def positive_int(doc: Mapping[str, Any], name: str, upper: int | None = None) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (upper and value > upper):
        bound = f" and at most {upper}" if upper else ""
        raise GatewayError(
            400, "invalid_value", f"'{name}' must be an integer of at least 1{bound}", param=name
        )
    return value


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        doc = jsoncodec.loads(body)
    except ValueError:
        raise GatewayError(400, "invalid_json", "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise GatewayError(400, "invalid_body", "request body must be a JSON object")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "missing_model", "'model' is required and must be a string", param="model")
    if len(model) > MAX_MODEL_NAME:
        # Served names are DNS-label-sized; a longer one is no model's, and never goes into a log or span.
        raise GatewayError(
            400, "invalid_value", f"'model' is longer than {MAX_MODEL_NAME} characters", param="model"
        )
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise GatewayError(400, "invalid_value", "'stream' must be true or false", param="stream")
    return doc
