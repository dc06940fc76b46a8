"""Every rendered object is one a real API server accepts, field for field.

Kubernetes' own kinds: `kubernetes-validate` in strict mode (unknown fields are errors) for 1.29 and
1.33; a kind it has no schema for raises, which fails the test. The RayService: KubeRay's CRD schema,
made strict the way the API server's pruning is (a field the schema does not know would be silently
dropped, so here it is an error), plus its pod templates validated as Kubernetes PodTemplates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from respublica.api.models import ModelDeployment
from respublica.operator.render import render

KUBERNETES_VERSIONS = ["1.29", "1.33"]
# The shared folder sits beside the repository root (`../shared`); CI lays it there, so under CI its
# absence is a broken checkout, not a reason to skip.
RAYSERVICE_CRD = (
    Path(__file__).resolve().parents[3].parent / "shared" / "schemas" / "kuberay" / "ray.io_rayservices.yaml"
)


def in_ci(environ: dict[str, str] | None = None) -> bool:
    """CI=true (GitHub Actions, GitLab, most others set it)."""
    return (os.environ if environ is None else environ).get("CI", "").strip().lower() in {"true", "1", "yes"}


def test_in_ci_reads_the_ci_variable() -> None:
    assert in_ci({"CI": "true"}) and in_ci({"CI": "1"})
    assert not in_ci({}) and not in_ci({"CI": "false"}) and not in_ci({"CI": ""})


def _strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever the API server would prune."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def rayservice_validator() -> jsonschema.Draft7Validator:
    if not RAYSERVICE_CRD.exists():
        missing = f"KubeRay's RayService CRD is not at {RAYSERVICE_CRD} (the shared schemas are absent)"
        if in_ci():
            pytest.fail(f"{missing}; CI must lay shared/ beside the clone")
        pytest.skip(missing)
    crd = yaml.safe_load(RAYSERVICE_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def _pod_templates(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster["workerGroupSpecs"]]
    return [
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": t}
        for t in templates
    ]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_objects_are_valid(md: ModelDeployment, version: str) -> None:
    checked = 0
    for obj in render(md):
        targets = _pod_templates(obj) if obj["kind"] == "RayService" else [obj]
        for target in targets:
            # Raises ValidationError on a bad field and SchemaNotFoundError on an unknown kind.
            used = kubernetes_validate.validate(target, version, strict=True)
            assert used == version, f"validated {target['kind']} against {used}, not {version}"
            checked += 1
    assert checked >= 4


def test_rayservice_matches_kuberay_crd(
    md: ModelDeployment, rayservice_validator: jsonschema.Draft7Validator
) -> None:
    (rayservice,) = [obj for obj in render(md) if obj["kind"] == "RayService"]
    errors = sorted(rayservice_validator.iter_errors(rayservice), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_strict_checks_catch_a_typo(
    md: ModelDeployment, rayservice_validator: jsonschema.Draft7Validator
) -> None:
    objects = render(md)
    (rayservice,) = [obj for obj in objects if obj["kind"] == "RayService"]
    rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscaler"] = True
    assert list(rayservice_validator.iter_errors(rayservice))
    policy = next(obj for obj in objects if obj["kind"] == "NetworkPolicy")
    policy["spec"]["ingres"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, "1.33", strict=True)
