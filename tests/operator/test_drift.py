"""Drift (pure), and the owner references that make deletion clean (kmock does not garbage-collect)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from respublica.api.models import ModelDeployment
from respublica.operator.drift import compare, covers, replacement, stale
from respublica.operator.render import SPEC_HASH_ANNOTATION, render


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies `application/merge-patch+json`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def model(uid: str = "uid-1", **spec: Any) -> ModelDeployment:
    base: dict[str, Any] = {
        "model": {"source": "hf://org/m", "revision": "abc", "servedName": "m"},
        "resources": {"gpus": 1, "gpuProduct": "NVIDIA-H100-80GB-HBM3", "nodeSelector": {"pool": "gpu"}},
        "cache": {"size": "100Gi"},
    }
    base.update(spec)
    return ModelDeployment.model_validate(
        {"metadata": {"name": "m", "namespace": "ai", "uid": uid, "generation": 1}, "spec": base}
    )


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind)


def as_served(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns: the object plus what it and other controllers add."""
    live = copy.deepcopy(obj)
    live["metadata"].update(
        uid="child-uid", resourceVersion="42", generation=1, creationTimestamp="2026-01-01T00:00:00Z"
    )
    live["metadata"].setdefault("labels", {})["added-by-someone"] = "yes"
    live["metadata"].setdefault("annotations", {})["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    live["status"] = {"anything": True}
    if obj["kind"] == "Job":
        live["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": "x"}}
        live["spec"]["template"]["metadata"]["labels"]["job-name"] = obj["metadata"]["name"]
        for container in live["spec"]["template"]["spec"]["containers"]:
            container.setdefault("terminationMessagePath", "/dev/termination-log")
    if obj["kind"] == "PersistentVolumeClaim":
        live["spec"]["volumeName"] = "pvc-123"
        live["spec"].setdefault("storageClassName", "standard")
        live["spec"]["volumeMode"] = "Filesystem"
    if obj["kind"] == "NetworkPolicy":
        for rule in live["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                port.setdefault("protocol", "TCP")
    return live


@pytest.mark.parametrize("kind", ["RayService", "NetworkPolicy", "PersistentVolumeClaim", "Job"])
def test_additions_by_the_server_are_not_drift(kind: str) -> None:
    want = by_kind(render(model()), kind)
    assert compare(as_served(want), want).in_sync


@pytest.mark.parametrize("kind", ["RayService", "NetworkPolicy"])
def test_spec_change_is_patched_to_the_new_render(kind: str) -> None:
    old = as_served(by_kind(render(model()), kind))
    want = by_kind(render(model(scaling={"minReplicas": 1, "maxReplicas": 3})), kind)
    found = compare(old, want)
    assert not found.in_sync and not found.recreate
    assert found.patch is not None
    assert found.patch["metadata"]["annotations"] == {
        SPEC_HASH_ANNOTATION: want["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    }
    patched = merge(old, found.patch)
    assert compare(patched, want).in_sync
    assert patched["metadata"]["labels"]["added-by-someone"] == "yes"  # others' labels stay
    assert patched["status"] == {"anything": True}


def test_hand_edit_with_the_same_hash_is_drift() -> None:
    want = by_kind(render(model()), "RayService")
    live = as_served(want)
    live["spec"]["serveConfigV2"] = "applications: []"
    found = compare(live, want)
    assert found.fields == ["spec"]
    assert merge(live, found.patch)["spec"]["serveConfigV2"] == want["spec"]["serveConfigV2"]


def test_a_dropped_key_is_removed_not_left_behind() -> None:
    """A newer render without a nodeSelector entry must not leave the old entry in place."""
    old = as_served(by_kind(render(model()), "RayService"))
    want = by_kind(render(model(resources={"gpus": 1})), "RayService")
    patched = merge(old, compare(old, want).patch)
    assert covers(patched["spec"], want["spec"]) and covers(want["spec"], patched["spec"])


def test_owned_label_and_owner_reference_are_put_back() -> None:
    want = by_kind(render(model()), "NetworkPolicy")
    live = as_served(want)
    live["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "someone-else"
    live["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "other"}
    ]
    found = compare(live, want)
    assert found.patch is not None
    assert found.patch["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "respublica"}
    refs = found.patch["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs] == ["other", "uid-1"]  # ours added, theirs kept
    assert compare(merge(live, found.patch), want).in_sync


def test_job_template_drift_recreates_the_job() -> None:
    want = by_kind(render(model()), "Job")
    live = as_served(want)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    found = compare(live, want)
    assert found.recreate


def test_job_metadata_only_change_is_a_patch_not_a_recreate() -> None:
    old = as_served(by_kind(render(model()), "Job"))
    want = by_kind(render(model(scaling={"minReplicas": 1, "maxReplicas": 3})), "Job")
    assert old["metadata"]["name"] == want["metadata"]["name"]  # same weights, same download
    found = compare(old, want)
    assert not found.recreate and found.patch is not None and set(found.patch) == {"metadata"}


def test_pvc_only_grows_in_place() -> None:
    old = as_served(by_kind(render(model()), "PersistentVolumeClaim"))
    want = by_kind(render(model(cache={"size": "200Gi"})), "PersistentVolumeClaim")
    found = compare(old, want)
    assert not found.recreate
    assert found.patch is not None
    assert found.patch["spec"] == {"resources": {"requests": {"storage": "200Gi"}}}


def test_canonicalised_quantities_are_not_drift() -> None:
    want = by_kind(render(model(cache={"size": "1.5Gi"})), "PersistentVolumeClaim")
    live = as_served(want)
    live["spec"]["resources"]["requests"]["storage"] = "1536Mi"  # what the API server returns
    assert compare(live, want).in_sync
    assert covers("500m", "0.5") and covers("1", "1000m") and covers("2Gi", "2048Mi")
    assert covers("2", 2) and not covers("3", 2)
    assert not covers("1Gi", "1G") and not covers("2.60.0", "2.6.0") and not covers("abc", "1")


def test_covers_and_replacement_basics() -> None:
    assert covers({"a": 1, "b": 2}, {"a": 1})
    assert not covers({"a": 1}, {"a": 1, "b": 2})
    assert covers([{"x": 1, "y": 2}], [{"x": 1}])
    assert not covers([{"x": 1}, {"x": 2}], [{"x": 1}])
    assert covers(1, 1.0) and not covers(True, 1)
    assert replacement({"a": 1, "b": {"c": 1, "d": 2}}, {"a": 1, "b": {"c": 1}}) == {"b": {"d": None}}


def test_every_child_is_owned_by_the_model_deployment() -> None:
    """Deletion is the garbage collector's: each child names its owner (uid), as the controller."""
    md = model(uid="uid-owner")
    for obj in render(md):
        refs = obj["metadata"]["ownerReferences"]
        assert refs == [
            {
                "apiVersion": "respublica.dev/v1alpha1",
                "kind": "ModelDeployment",
                "name": "m",
                "uid": "uid-owner",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], obj["kind"]
        assert obj["metadata"]["namespace"] == "ai"  # owner references cannot cross namespaces


def test_stale_children_are_only_our_own_leftovers() -> None:
    old = [as_served(o) for o in render(model())]
    new = render(model(cache=None))
    foreign = {"kind": "Job", "metadata": {"name": "x", "ownerReferences": [{"uid": "someone-else"}]}}
    gone = stale([*old, foreign], new, "uid-1")
    assert sorted(o["kind"] for o in gone) == ["Job", "PersistentVolumeClaim"]
    assert stale(old, render(model()), "uid-1") == []
