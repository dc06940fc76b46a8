"""ModelDeployments from YAML, and every problem of a bad one in words a person can act on.

Two kinds of failure, kept apart because the CLI answers them differently:
- `InputError`: not something to validate at all (no such file, not YAML, not a ModelDeployment);
- `SpecError`: a ModelDeployment with problems, each a line `<field>: <what is wrong and allowed>`.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from respublica.api.crd import openapi_schema
from respublica.api.defaulting import apply_defaults
from respublica.api.models import (
    API_VERSION,
    CROSS_FIELD_ERROR,
    KIND,
    PATTERN_HELP,
    ModelDeployment,
)
from respublica.api.rules import broken_rules


class InputError(Exception):
    """The input is not a ModelDeployment to validate; the message says what it is instead."""


class SpecError(Exception):
    """One or more ModelDeployments have problems."""

    def __init__(self, results: list[Validation]) -> None:
        self.results = [result for result in results if result.problems]
        lines = [f"{result.name}: {problem}" for result in self.results for problem in result.problems]
        super().__init__("\n".join(lines))


@dataclass
class Validation:
    """The outcome of validating one document: the model when valid, else every problem found."""

    name: str
    model: ModelDeployment | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_text(path: str) -> str:
    """The file's text; `-` reads standard input."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a YAML file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (expected UTF-8 YAML)") from None
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror or error})") from None


def parse_documents(text: str, source: str = "<input>") -> list[dict[str, Any]]:
    """The ModelDeployment documents of a (multi-document) YAML text, as plain data.

    Empty documents are skipped; anything else that is not a ModelDeployment is an `InputError`.
    """
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{source}: not valid YAML{where}: {problem}") from None
    if not documents:
        raise InputError(f"{source}: no ModelDeployment in it (the file is empty)")
    for number, doc in enumerate(documents, start=1):
        label = f"{source}: document {number}" if len(documents) > 1 else source
        if not isinstance(doc, dict):
            raise InputError(f"{label} is a {_yaml_type(doc)}, not a ModelDeployment mapping")
        kind, api_version = doc.get("kind"), doc.get("apiVersion")
        if kind != KIND or api_version != API_VERSION:
            found = f"{kind or 'no kind'} ({api_version or 'no apiVersion'})"
            raise InputError(
                f"{label} is {found}, not a {KIND} ({API_VERSION}): set `apiVersion: {API_VERSION}` and "
                f"`kind: {KIND}`"
            )
    return documents


def validate(document: dict[str, Any]) -> Validation:
    """Validate one ModelDeployment document and report every problem at once.

    Field errors come from the models; the cross-field rules are evaluated on the document with the
    CRD's defaults applied, as the API server would, so they are reported even when fields are wrong too.
    """
    result = Validation(name=_name(document))
    try:
        result.model = ModelDeployment.model_validate(document)
    except ValidationError as error:
        result.problems.extend(
            _describe(detail, ModelDeployment)
            for detail in error.errors()
            if detail["type"] != CROSS_FIELD_ERROR
        )
    spec = document.get("spec")
    if isinstance(spec, dict):
        result.problems.extend(rule.message for rule in broken_rules(_defaulted_spec(spec)))
    result.problems = list(dict.fromkeys(result.problems))
    if result.problems:
        result.model = None
    return result


def validate_text(text: str, source: str = "<input>") -> list[Validation]:
    """Validate every document of a YAML text."""
    return [validate(doc) for doc in parse_documents(text, source)]


def load(text: str, source: str = "<input>") -> list[ModelDeployment]:
    """Every ModelDeployment of a YAML text; `SpecError` listing every problem if any is invalid."""
    results = validate_text(text, source)
    if any(not result.ok for result in results):
        raise SpecError(results)
    return [result.model for result in results if result.model is not None]


def load_file(path: str) -> list[ModelDeployment]:
    """Every ModelDeployment of a YAML file (`-`: standard input)."""
    return load(read_text(path), path)


def describe(error: ValidationError, root: type[BaseModel] = ModelDeployment) -> list[str]:
    """A ValidationError as lines for people: `<camelCase path>: <what is allowed> (got <value>)`.

    The one formatter of validation errors: the CLI's `validate`, the operator's Failed condition
    and the gateway's admin input all use it. Paths are from the root of the validated object
    (`spec.scaling.minReplicas`), so validate the whole `root` model, not a part of it, for the
    paths to read right and for unknown fields to list what is allowed.
    """
    lines: list[str] = []
    for detail in error.errors():
        if detail["type"] == CROSS_FIELD_ERROR:
            lines.extend(str((detail.get("ctx") or {}).get("rules", detail["msg"])).splitlines())
        else:
            lines.append(_describe(detail, root))
    return list(dict.fromkeys(lines))


def describe_in_one_line(
    error: ValidationError, root: type[BaseModel] = ModelDeployment, limit: int = 2000
) -> str:
    """`describe` joined with '; ' and cut to `limit` characters (a condition message, an API error)."""
    return "; ".join(describe(error, root))[:limit]


def _defaulted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    defaulted: dict[str, Any] = apply_defaults(openapi_schema()["properties"]["spec"], spec)
    return defaulted


def _name(document: dict[str, Any]) -> str:
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) and name else "(unnamed)"


def _describe(detail: ErrorDetails, root: type[BaseModel]) -> str:
    """One pydantic error as `<camelCase path>: <what is allowed> (got <value>)`."""
    loc = detail["loc"]
    path = _path(loc)
    kind = detail["type"]
    ctx = detail.get("ctx") or {}
    value = detail.get("input")
    got = f" (got {_show(value)})"
    if kind == "missing":
        return f"{path}: is required"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1], root)
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown field{hint}"
    messages: dict[str, str] = {
        "literal_error": f"must be one of {ctx.get('expected')}",
        "enum": f"must be one of {ctx.get('expected')}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be greater than {ctx.get('gt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "less_than": f"must be less than {ctx.get('lt')}",
        "string_too_short": f"must be at least {ctx.get('min_length')} character(s) long",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters long",
        "too_short": f"must have at least {ctx.get('min_length')} item(s)",
        "too_long": f"must have at most {ctx.get('max_length')} items",
        "string_pattern_mismatch": "must be "
        + PATTERN_HELP.get(str(ctx.get("pattern")), f"text matching {ctx.get('pattern')}"),
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "int_parsing": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "string_type": "must be a string (quote it in YAML)",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "list_type": "must be a list",
        "dict_type": "must be a mapping (key: value pairs)",
        "model_type": "must be a mapping (key: value pairs)",
        "model_attributes_type": "must be a mapping (key: value pairs)",
    }
    if kind in ("too_short", "too_long") and isinstance(value, list | dict):
        got = f" (got {len(value)})"
    elif kind in ("string_too_long",) and isinstance(value, str):
        got = f" (got {len(value)} characters)"
    message = messages.get(kind)
    if message is None:
        text = detail["msg"].removeprefix("Value error, ")
        message = text[:1].lower() + text[1:]
    return f"{path}: {message}{got}"


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.replace("_", "").isalnum():
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "(document)"


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    text = json.dumps(value) if isinstance(value, str | bool | int | float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _yaml_type(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _allowed_fields(loc: tuple[int | str, ...], root: type[BaseModel]) -> list[str]:
    """The wire names of the fields allowed at `loc` in `root`, for an unknown-field message."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        found = None
        for name, info in model.model_fields.items():
            if part in (info.alias, name):
                found = info.annotation
                break
        model = _model_in(found)
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `LoraSpec | None` or `list[Toleration]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
