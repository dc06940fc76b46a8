"""Upgrades: spec.upgrade.strategy rendered into the RayService's upgradeStrategy, and InPlace done by
the operator (KubeRay's `None` never rebuilds a cluster; with no active and no pending cluster
`shouldPrepareNewCluster` builds one, kuberay rayservice_controller.go), on kmock and as pure rules."""

from __future__ import annotations

import copy
from typing import Any

import kmock
import pytest

from helpers import kmock_api as kapi
from respublica.api.models import ModelDeployment
from respublica.operator.in_place_upgrade import stale_active_cluster
from respublica.operator.kuberay_model import cluster_action
from respublica.operator.render import render
from respublica.operator.render.rayservice import CLUSTER_HASH_ANNOTATION

RAYCLUSTERS = "ray.io/v1/rayclusters"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _md(strategy: str | None = None, image: str | None = None, max_replicas: int = 1) -> ModelDeployment:
    spec: dict[str, Any] = {
        "model": {"source": "hf://org/m", "revision": REVISION, "servedName": "m"},
        "scaling": {"maxReplicas": max_replicas},
    }
    if strategy:
        spec["upgrade"] = {"strategy": strategy}
    if image:
        spec["image"] = image
    return ModelDeployment.model_validate({"metadata": {"name": "m", "namespace": "ai"}, "spec": spec})


def _rs(md: ModelDeployment) -> dict[str, Any]:
    return next(o for o in render(md) if o["kind"] == "RayService")


@pytest.mark.parametrize(
    ("strategy", "kuberay_type"), [(None, "NewCluster"), ("NewCluster", "NewCluster"), ("InPlace", "None")]
)
def test_the_strategy_is_rendered_and_kept(strategy: str | None, kuberay_type: str) -> None:
    rs = _rs(_md(strategy))
    assert rs["spec"]["upgradeStrategy"] == {"type": kuberay_type}


def test_the_cluster_hash_moves_with_kuberays_hash_only() -> None:
    base = _rs(_md())
    scaled = _rs(_md(max_replicas=4))
    new_image = _rs(_md(image="registry.example/ray-llm:2"))
    hash_of = lambda rs: rs["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]  # noqa: E731
    assert hash_of(base) == hash_of(scaled)
    assert (
        cluster_action(base["spec"]["rayClusterConfig"], scaled["spec"]["rayClusterConfig"], None) == "none"
    )
    assert hash_of(base) != hash_of(new_image)
    old, new = base["spec"]["rayClusterConfig"], new_image["spec"]["rayClusterConfig"]
    assert cluster_action(old, new, "NewCluster") == "new-cluster"
    assert cluster_action(old, new, "None") == "blocked"  # why InPlace needs the operator's delete


def _live(hash_: str | None, pending: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    status: dict[str, Any] = {"activeServiceStatus": {"rayClusterName": "m-abcde"}}
    if pending:
        status["pendingServiceStatus"] = {"rayClusterName": pending}
    annotations = {CLUSTER_HASH_ANNOTATION: hash_} if hash_ else {}
    return {"status": status}, {"metadata": {"name": "m-abcde", "annotations": annotations}}


def test_in_place_deletes_only_a_cluster_built_from_another_spec() -> None:
    want = _rs(_md("InPlace", image="registry.example/ray-llm:2"))
    old_hash = _rs(_md("InPlace"))["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
    assert stale_active_cluster(want, *_live(old_hash)) == "m-abcde"
    same = want["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
    assert stale_active_cluster(want, *_live(same)) is None
    assert stale_active_cluster(want, *_live(None)) is None  # built before the annotation: unknown
    assert stale_active_cluster(want, *_live(old_hash, pending="m-fghij")) is None  # already rebuilding
    new_cluster = _rs(_md("NewCluster", image="registry.example/ray-llm:2"))
    assert stale_active_cluster(new_cluster, *_live(old_hash)) is None  # KubeRay's own upgrade


@pytest.mark.timeout(120)
async def test_in_place_upgrade_deletes_the_active_cluster(k8s: kmock.KubernetesEmulator) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body(upgrade={"strategy": "InPlace"}))
        rs = await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="RayService"
        )
        assert rs["spec"]["upgradeStrategy"] == {"type": "None"}
        # KubeRay's part: a RayCluster carrying the RayService's annotations, named in its status.
        cluster = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {
                "name": "llama-abcde",
                "namespace": kapi.NS,
                "annotations": copy.deepcopy(rs["metadata"]["annotations"]),
            },
            "spec": copy.deepcopy(rs["spec"]["rayClusterConfig"]),
        }
        await kapi.api(k8s, "POST", kapi.path(RAYCLUSTERS), cluster)
        status = {"status": {"activeServiceStatus": {"rayClusterName": "llama-abcde"}}}
        await kapi.api(k8s, "PATCH", kapi.path(kapi.RAYSERVICES, "llama", "status"), status)
        # A scaling change keeps the cluster (the operator patches bounds instead) ...
        scaled = kapi.md_body(generation=2, upgrade={"strategy": "InPlace"}, scaling={"maxReplicas": 3})
        await kapi.api(
            k8s, "PATCH", kapi.path(kapi.MD, "llama"), {"metadata": {"generation": 2}, "spec": scaled["spec"]}
        )
        await kapi.eventually(
            lambda: (
                kapi.objects_of(k8s, RAYCLUSTERS)["llama-abcde"]["spec"]["workerGroupSpecs"][0]["maxReplicas"]
                == 3
                or None
            ),
            what="the new bounds",
        )
        # ... a new image deletes it, for KubeRay to rebuild.
        imaged = kapi.md_body(
            generation=3,
            upgrade={"strategy": "InPlace"},
            scaling={"maxReplicas": 3},
            image="registry.example/ray:2",
        )
        await kapi.api(
            k8s, "PATCH", kapi.path(kapi.MD, "llama"), {"metadata": {"generation": 3}, "spec": imaged["spec"]}
        )
        await kapi.eventually(
            lambda: "llama-abcde" not in kapi.objects_of(k8s, RAYCLUSTERS) or None,
            what="the deleted RayCluster",
        )
    used = kapi.used_grants(k8s)
    assert used <= kapi.NEEDED, used - kapi.NEEDED
    assert ("ray.io", "rayclusters", "delete") in used


def test_the_plan_names_the_cost_of_each_change() -> None:
    from respublica.operator.upgrade_plan import plan

    base = _rs(_md())
    assert plan(base, _rs(_md())).kind == "none"
    assert plan(base, _rs(_md(max_replicas=4))).kind == "scaling"
    new_cluster = plan(base, _rs(_md(image="registry.example/ray:2")))
    assert new_cluster.kind == "new-cluster" and "GPUs are held twice" in new_cluster.message
    in_place = plan(_rs(_md("InPlace")), _rs(_md("InPlace", image="registry.example/ray:2")))
    assert in_place.kind == "in-place" and "downtime" in in_place.message
