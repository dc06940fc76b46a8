"""The child kinds render declares are exactly the kinds it produces (so pruning, watches, paths and
RBAC, which all read CHILD_KINDS, cover every child)."""

from __future__ import annotations

from typing import Any

import pytest

from respublica.api.models import ModelDeployment
from respublica.operator.render import CHILD_KINDS, RAYSERVICE, ResourceKind, render
from respublica.operator.render.kinds import CACHE_CLAIM


def test_every_rendered_object_is_a_declared_kind(md: ModelDeployment) -> None:
    declared = {(k.api_version, k.kind) for k in CHILD_KINDS}
    assert {(o["apiVersion"], o["kind"]) for o in render(md)} <= declared


def test_every_declared_kind_is_rendered_by_some_case(matrix: dict[str, dict[str, Any]]) -> None:
    rendered: set[tuple[str, str]] = set()
    for case in matrix.values():
        rendered |= {(o["apiVersion"], o["kind"]) for o in render(ModelDeployment.model_validate(case))}
    assert rendered == {(k.api_version, k.kind) for k in CHILD_KINDS}


@pytest.mark.parametrize(
    ("kind", "group", "version", "prefix"),
    [(RAYSERVICE, "ray.io", "v1", "/apis/ray.io/v1"), (CACHE_CLAIM, "", "v1", "/api/v1")],
)
def test_group_version_and_prefix(kind: ResourceKind, group: str, version: str, prefix: str) -> None:
    assert (kind.group, kind.version, kind.api_prefix) == (group, version, prefix)
    meta: dict[str, Any] = kind.type_meta()
    assert meta == {"apiVersion": kind.api_version, "kind": kind.kind}
