"""The generated CRD is structural, bounded for CEL's cost estimator, and what is committed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import re2
import yaml

from helpers.paths import REPO
from respublica.api.crd import crd, crd_yaml, openapi_schema
from respublica.api.defaulting import apply_defaults
from respublica.api.models import MAX_NAME_LENGTH
from respublica.api.rules import RULES

FORBIDDEN = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "const", "title", "propertyNames", "examples"}


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


SCHEMA = openapi_schema()
ALL = list(nodes(SCHEMA))


def test_committed_file_is_current() -> None:
    committed = (REPO / "manifests" / "crds" / "respublica.dev_modeldeployments.yaml").read_text()
    assert committed == crd_yaml(), (
        "regenerate: respublica crd > manifests/crds/respublica.dev_modeldeployments.yaml"
    )


@pytest.mark.parametrize("version", ["1.29", "1.33"])
def test_crd_is_a_valid_kubernetes_object(version: str) -> None:
    """The CRD object itself, against Kubernetes' own apiextensions.k8s.io/v1 schema (unknown fields fail)."""
    assert kubernetes_validate.validate(crd(), version, strict=True) == version


def test_output_is_deterministic() -> None:
    assert crd_yaml() == crd_yaml()
    (document,) = [d for d in yaml.safe_load_all(crd_yaml()) if d]
    assert document == crd()


@pytest.mark.parametrize(("path", "node"), ALL, ids=[p or "(root)" for p, _ in ALL])
def test_node_is_structural(path: str, node: dict[str, Any]) -> None:
    assert not FORBIDDEN & node.keys(), f"{path}: {FORBIDDEN & node.keys()}"
    assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
    assert node.get("uniqueItems") is not True, path
    assert node.get("additionalProperties") is not False, path
    if path and path != ".metadata":
        assert node.get("description") or path.endswith(("[]", "{}")), f"{path} has no description"
    if node["type"] == "object" and path != ".metadata":
        assert "properties" in node or isinstance(node.get("additionalProperties"), dict), path
        assert not ("properties" in node and "additionalProperties" in node), path
    if node.get("nullable"):
        assert "enum" not in node, f"{path}: the API server rejects null against an enum even when nullable"
    if "exclusiveMinimum" in node:
        assert node["exclusiveMinimum"] is True and "minimum" in node, path


@pytest.mark.parametrize(("path", "node"), ALL, ids=[p or "(root)" for p, _ in ALL])
def test_node_is_bounded(path: str, node: dict[str, Any]) -> None:
    """Every string, list and map has a size limit, so CEL's cost estimate stays within budget."""
    if path in (".apiVersion", ".kind"):
        return
    if node["type"] == "string":
        assert "maxLength" in node or "enum" in node, f"{path} has no maxLength"
    if node["type"] == "array":
        assert "maxItems" in node, f"{path} has no maxItems"
    if node["type"] == "object" and "additionalProperties" in node:
        assert "maxProperties" in node, f"{path} has no maxProperties"


def test_every_list_a_rule_iterates_is_bounded() -> None:
    iterated = re.compile(r"self\.(\w+)\.(?:all|exists|exists_one|map|filter)\(")
    for path, node in ALL:
        for rule in node.get("x-kubernetes-validations", []):
            for name in iterated.findall(rule["rule"]):
                target = node["properties"][name]
                assert target["type"] == "array" and "maxItems" in target, f"{path}.{name}"
                assert "maxLength" in target["items"] or target["items"]["type"] == "object"


@pytest.mark.parametrize(
    ("path", "node"), [(p, n) for p, n in ALL if "pattern" in n], ids=lambda x: str(x)[:40]
)
def test_patterns_are_re2(path: str, node: dict[str, Any]) -> None:
    """The API server compiles patterns with Go's RE2: no look-around, no back-references."""
    re2.compile(node["pattern"])
    assert not re.search(r"\(\?[=!<>]|\\[1-9]", node["pattern"]), path


@pytest.mark.parametrize(
    ("path", "node"), [(p, n) for p, n in ALL if "default" in n], ids=lambda x: str(x)[:40]
)
def test_defaults_are_valid(path: str, node: dict[str, Any]) -> None:
    """The API server refuses a CRD whose defaults (after defaulting their own insides) do not validate."""
    value = apply_defaults(node, node["default"])
    if node["type"] == "object":
        assert node["default"] == {}, path
    jsonschema.Draft202012Validator({"type": node["type"]}).validate(value)
    assert "enum" not in node or value in node["enum"], path


def test_rules_sit_on_their_nodes() -> None:
    spec = SCHEMA["properties"]["spec"]
    for rule in RULES:
        node = spec
        for key in rule.where:
            node = node["properties"][key]
        entries = [e for e in node["x-kubernetes-validations"] if e["rule"] == rule.cel]
        assert entries == [{**entries[0], "rule": rule.cel, "message": rule.message}]
        field_path = entries[0].get("fieldPath")
        if field_path:  # it must name a property under the node, or the API server refuses the CRD
            target = node
            for key in field_path.lstrip(".").split("."):
                target = target["properties"][key]
            assert ".".join(("spec", *rule.where, field_path.lstrip("."))) == rule.field
    count = sum(len(n.get("x-kubernetes-validations", [])) for _, n in ALL)
    assert count == len(RULES) + len(SCHEMA["x-kubernetes-validations"])


def test_rules_compile_and_read_defaulted_fields() -> None:
    """Every rule compiles, and reads a field without has() only where it is required or defaulted."""
    env = celpy.Environment()
    for path, node in ALL:
        for entry in node.get("x-kubernetes-validations", []):
            env.compile(entry["rule"])
            assert entry["message"] and not entry["message"].endswith(".")
            for dotted in re.findall(r"self((?:\.\w+)+)", entry["rule"]):
                parts = dotted.strip(".").split(".")
                if parts[0] == "metadata":
                    continue  # every object has metadata.name by the time it is validated
                target = node
                for depth, name in enumerate(parts):
                    if "properties" not in target or name not in target["properties"]:
                        break  # a method call, or metadata
                    guarded = f"has(self.{'.'.join(parts[: depth + 1])})" in entry["rule"]
                    required = name in target.get("required", []) or "default" in target["properties"][name]
                    assert guarded or required, f"{path}: {entry['rule']} reads {name} unguarded"
                    target = target["properties"][name]


def test_root_rules_limit_the_name() -> None:
    rules = SCHEMA["x-kubernetes-validations"]
    assert any(f"size(self.metadata.name) <= {MAX_NAME_LENGTH}" == r["rule"] for r in rules)
    assert all("metadata.name" in r["message"] for r in rules)


def test_resource_definition() -> None:
    definition = crd()
    assert definition["apiVersion"] == "apiextensions.k8s.io/v1"
    assert definition["metadata"]["name"] == "modeldeployments.respublica.dev"
    spec = definition["spec"]
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["md"]
    assert spec["names"]["categories"] == ["respublica"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Model": ".spec.model.servedName",
        "Phase": ".status.phase",
        "Ready": ".status.replicas.ready",
        "Desired": ".status.replicas.desired",
        "Endpoint": ".status.endpoint",
        "Age": ".metadata.creationTimestamp",
    }
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue
        node = version["schema"]["openAPIV3Schema"]
        for key in column["jsonPath"].lstrip(".").split("."):
            node = node["properties"][key]
        assert node["type"] == column["type"], column


def test_status_is_structural_without_preserving_unknown_fields() -> None:
    status = SCHEMA["properties"]["status"]
    assert all("x-kubernetes-preserve-unknown-fields" not in n for _, n in ALL)
    assert status["properties"]["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_docs_name_every_spec_field() -> None:
    """docs/api.md is the reference: a field added to the models must be documented there."""
    text = (REPO / "docs" / "api.md").read_text()
    spec = SCHEMA["properties"]["spec"]
    missing = [path for path, _ in nodes(spec, "spec") if path.rsplit(".", 1)[-1].strip("[]{}") not in text]
    assert not missing, f"docs/api.md does not mention: {missing}"
