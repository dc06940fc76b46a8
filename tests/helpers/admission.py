"""What the Kubernetes API server would do with a ModelDeployment, emulated from the generated CRD.

Admission of a custom resource, in the server's order: drop nulls of non-nullable fields and fill
defaults (`apply_defaults`), check the structural schema (here: jsonschema on the openAPIV3Schema,
translated from OpenAPI v3.0), then evaluate every `x-kubernetes-validations` rule on its node (here:
cel-python). Unknown fields count as schema errors: kubectl's default strict field validation rejects
them (the server would otherwise prune them silently).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import celpy
import jsonschema
import yaml

from helpers.paths import SAMPLES
from respublica.api.crd import openapi_schema
from respublica.api.defaulting import apply_defaults


def to_json_schema(node: Any) -> Any:
    """An OpenAPI v3.0 schema node as JSON Schema 2020-12, with strict field validation."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "description"):
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = to_json_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    if node.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    if node.get("type") == "object" and "properties" in node:
        out.setdefault("additionalProperties", False)
    return out


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = to_json_schema(openapi_schema())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@functools.cache
def _cel_program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _without_nulls(value: Any) -> Any:
    # Kubernetes' CEL values treat a null-valued field of an object as absent (has() is false).
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _cel_failures(schema: dict[str, Any], value: Any, path: str, out: list[CelFailure]) -> None:
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations", []):
        activation = {"self": celpy.json_to_cel(_without_nulls(value))}
        result = _cel_program(rule["rule"]).evaluate(activation)
        if not isinstance(result, celpy.celtypes.BoolType):
            raise AssertionError(f"rule {rule['rule']!r} at {path} evaluated to {result!r}, not a bool")
        if not bool(result):
            out.append(CelFailure(path=path, rule=rule["rule"], message=rule["message"]))
    if isinstance(value, dict):
        properties = schema.get("properties")
        if properties is not None:
            for key, sub in properties.items():
                if key in value:
                    _cel_failures(sub, value[key], f"{path}.{key}", out)
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                _cel_failures(schema["additionalProperties"], item, f"{path}.{key}", out)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _cel_failures(schema["items"], item, f"{path}[{index}]", out)


@dataclass(frozen=True)
class CelFailure:
    path: str
    rule: str
    message: str


@dataclass
class Admission:
    """What the emulated API server said about one object."""

    defaulted: Any
    schema_errors: list[str] = field(default_factory=list)
    cel_failures: list[CelFailure] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return not self.schema_errors and not self.cel_failures

    @property
    def cel_messages(self) -> list[str]:
        return [failure.message for failure in self.cel_failures]


def admit(document: dict[str, Any]) -> Admission:
    """Default, schema-check and CEL-check one object as the API server would."""
    schema = openapi_schema()
    defaulted = apply_defaults(schema, document)
    errors = [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in _validator().iter_errors(defaulted)
    ]
    failures: list[CelFailure] = []
    if not errors:
        # The server type-checks before it runs rules; a rule on ill-typed data says nothing useful.
        _cel_failures(schema, defaulted, "", failures)
    return Admission(defaulted=defaulted, schema_errors=errors, cel_failures=failures)


def sample_documents() -> dict[str, dict[str, Any]]:
    out = {}
    for path in SAMPLES:
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        for number, doc in enumerate(docs):
            out[path.name if len(docs) == 1 else f"{path.name}#{number}"] = doc
    return out
