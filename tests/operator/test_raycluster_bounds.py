"""Scaling that applies: KubeRay ignores bounds and tolerations, so the operator carries them over.

Driven by the model of KubeRay's update rule (`respublica.operator.kuberay_model`, written from
kuberay `utils/util.go` `GenerateHashWithoutReplicasAndWorkersToDelete` and
`rayservice_controller.go` `shouldUpdateCluster` / `shouldPrepareNewCluster`): a RayCluster that
KubeRay created from the old spec stays as it was for every change the model calls "none", and the
operator's patch (applied here with a real JSON-patch implementation) brings it to the new bounds
without changing KubeRay's hash, so KubeRay neither rebuilds nor fights it.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import jsonpatch
import pytest

from respublica.api.models import ModelDeployment
from respublica.operator.kuberay_model import cluster_action, hash_without_replicas
from respublica.operator.raycluster_bounds import bounds_patch, cluster_names
from respublica.operator.render import render
from respublica.operator.render.default_cache import live_facts

Obj = dict[str, Any]
LOG = logging.getLogger("test")


def _md(**scaling_and_resources: Any) -> ModelDeployment:
    spec: Obj = {
        "model": {
            "source": "hf://org/model",
            "revision": "0123456789abcdef0123456789abcdef01234567",
            "servedName": "m",
        },
        "resources": {"gpus": 1, **scaling_and_resources.pop("resources", {})},
        "scaling": {"minReplicas": 1, "maxReplicas": 2, **scaling_and_resources.pop("scaling", {})},
    }
    return ModelDeployment.model_validate({"metadata": {"name": "m", "namespace": "ai"}, "spec": spec})


def _rayservice(md: ModelDeployment, running: Obj | None = None) -> Obj:
    """As the operator renders it over the `running` RayService (which decides the default cache of
    a model at minReplicas 0, render/default_cache.py); None: a model being created."""
    (rs,) = [o for o in render(md, live=live_facts(running)) if o["kind"] == "RayService"]
    return rs


def _cluster_spec(md: ModelDeployment, running: Obj | None = None) -> Obj:
    spec: Obj = _rayservice(md, running)["spec"]["rayClusterConfig"]
    return spec


def _kuberay_creates(cluster_spec: Obj) -> Obj:
    """The RayCluster KubeRay makes from a RayService (the parts that matter here)."""
    return {"metadata": {"name": "m-abcde", "resourceVersion": "7"}, "spec": copy.deepcopy(cluster_spec)}


def _apply(live: Obj, ops: list[Obj]) -> Obj:
    patched: Obj = jsonpatch.apply_patch(live, ops)
    return patched


TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
CHANGES: dict[str, dict[str, Any]] = {
    "raise max": {"scaling": {"maxReplicas": 4}},
    "min to zero": {"scaling": {"minReplicas": 0}},
    "raise min": {"scaling": {"minReplicas": 2}},
    "toleration": {"resources": {"tolerations": [TOLERATION]}},
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_kuberay_ignores_the_change_and_the_operator_carries_it(change: str) -> None:
    running = _rayservice(_md())
    old, new = (
        running["spec"]["rayClusterConfig"],
        _cluster_spec(_md(**copy.deepcopy(CHANGES[change])), running),
    )
    assert old != new
    # KubeRay's rule: the hashes agree, the running RayCluster is left exactly as it was.
    assert cluster_action(old, new, None) == "none"
    live = _kuberay_creates(old)
    ops = bounds_patch(new, live)
    assert ops and ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}
    after = _apply(live, ops)
    (group,), (want,) = after["spec"]["workerGroupSpecs"], new["workerGroupSpecs"]
    assert (group["minReplicas"], group["maxReplicas"]) == (want["minReplicas"], want["maxReplicas"])
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["template"]["spec"].get("tolerations") == want["template"]["spec"].get("tolerations")
    # The patched cluster still has KubeRay's hash of the new spec: no rebuild, no revert.
    assert hash_without_replicas(after["spec"]) == hash_without_replicas(new)
    assert bounds_patch(new, after) == []  # converged: nothing more to write


def test_replicas_are_clamped_into_the_new_bounds() -> None:
    live = _kuberay_creates(_cluster_spec(_md(scaling={"maxReplicas": 4})))
    live["spec"]["workerGroupSpecs"][0]["replicas"] = 4  # the autoscaler went up
    after = _apply(live, bounds_patch(_cluster_spec(_md(scaling={"maxReplicas": 2})), live))
    assert after["spec"]["workerGroupSpecs"][0]["replicas"] == 2
    # The autoscaler's own moves within the bounds are not undone.
    live = _kuberay_creates(_cluster_spec(_md(scaling={"maxReplicas": 4})))
    live["spec"]["workerGroupSpecs"][0]["replicas"] = 3
    assert bounds_patch(_cluster_spec(_md(scaling={"maxReplicas": 4})), live) == []


def test_removed_tolerations_are_removed() -> None:
    live = _kuberay_creates(_cluster_spec(_md(resources={"tolerations": [TOLERATION]})))
    new = _cluster_spec(_md())
    after = _apply(live, bounds_patch(new, live))
    assert "tolerations" not in after["spec"]["workerGroupSpecs"][0]["template"]["spec"]


def test_a_concurrent_write_makes_the_patch_fail_not_clobber() -> None:
    """The autoscaler wrote between our read and our patch: the resourceVersion test fails."""
    live = _kuberay_creates(_cluster_spec(_md()))
    ops = bounds_patch(_cluster_spec(_md(scaling={"maxReplicas": 4})), live)
    live["metadata"]["resourceVersion"] = "8"
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        _apply(live, ops)


def test_a_group_the_live_cluster_lacks_is_left_to_kuberay() -> None:
    live = _kuberay_creates(_cluster_spec(_md()))
    live["spec"]["workerGroupSpecs"][0]["groupName"] = "renamed"
    assert bounds_patch(_cluster_spec(_md(scaling={"maxReplicas": 4})), live) == []


def test_cluster_names_are_the_active_and_pending_clusters() -> None:
    assert cluster_names(None) == []
    rs = {
        "status": {
            "activeServiceStatus": {"rayClusterName": "m-a"},
            "pendingServiceStatus": {"rayClusterName": "m-b"},
        }
    }
    assert cluster_names(rs) == ["m-a", "m-b"]


# --- the model itself, on the cases KubeRay's own code spells out --------------------------------


def test_model_pod_template_changes_rebuild_unless_the_strategy_is_none() -> None:
    old = _cluster_spec(_md())
    new = _cluster_spec(_md(resources={"memory": "96Gi"}))
    assert cluster_action(old, new, None) == "new-cluster"
    assert cluster_action(old, new, "NewCluster") == "new-cluster"
    assert cluster_action(old, new, "None") == "blocked"


def test_model_appended_worker_groups_update_in_place() -> None:
    old = _cluster_spec(_md())
    new = copy.deepcopy(old)
    new["workerGroupSpecs"].append({**copy.deepcopy(old["workerGroupSpecs"][0]), "groupName": "extra"})
    assert cluster_action(old, new, None) == "update"
    assert cluster_action(new, old, None) == "new-cluster"  # a removed group is a rebuild


def test_model_mutes_exactly_kuberays_fields() -> None:
    spec = _cluster_spec(_md())
    muted = copy.deepcopy(spec)
    group = muted["workerGroupSpecs"][0]
    group.update(replicas=9, minReplicas=5, maxReplicas=9, scaleStrategy={"workersToDelete": ["p"]})
    group["template"]["spec"]["schedulingGates"] = [{"name": "kueue"}]
    muted["headGroupSpec"]["template"]["spec"]["tolerations"] = [TOLERATION]
    muted["upgradeStrategy"] = {"type": "Recreate"}
    assert hash_without_replicas(muted) == hash_without_replicas(spec)
    group["numOfHosts"] = 2  # not muted
    assert hash_without_replicas(muted) != hash_without_replicas(spec)
