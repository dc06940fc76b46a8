"""What KubeRay does with a changed RayService, modelled from its controller (it cannot run here).

Two rules decide everything respublica depends on:

- `hash_without_replicas` models `GenerateHashWithoutReplicasAndWorkersToDelete`
  (kuberay `ray-operator/controllers/ray/utils/util.go`): the RayCluster spec is hashed with every
  worker group's `replicas`, `minReplicas`, `maxReplicas`, `scaleStrategy.workersToDelete`,
  tolerations and scheduling gates, the head's tolerations and scheduling gates, and the cluster's
  `upgradeStrategy` muted. KubeRay stores that hash on the RayCluster when it creates it.
- `cluster_action` models `shouldUpdateCluster` and `shouldPrepareNewCluster` with
  `isZeroDowntimeUpgradeEnabled` (`ray-operator/controllers/ray/rayservice_controller.go`): equal
  hashes, nothing happens to the RayCluster (so bounds and tolerations never reach it); equal up to
  worker groups appended at the end, the RayCluster is updated in place; otherwise a new RayCluster
  is prepared beside the old one, unless `spec.upgradeStrategy.type` is `None`, in which case
  nothing happens at all. Serve config changes are applied to the running cluster either way.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import orjson

Obj = dict[str, Any]
Action = Literal["none", "update", "new-cluster", "blocked"]

# KubeRay's RayServiceUpgradeType values (`ray-operator/apis/ray/v1/rayservice_types.go`).
NEW_CLUSTER = "NewCluster"
UPGRADE_NONE = "None"

# spec.upgrade.strategy -> the RayService's spec.upgradeStrategy.type. InPlace is `None`: KubeRay then
# never applies a pod-template change (`isZeroDowntimeUpgradeEnabled` is false, so
# `shouldPrepareNewCluster` answers no), and the operator deletes the active RayCluster instead; with
# neither an active nor a pending cluster `shouldPrepareNewCluster` answers yes before it looks at the
# strategy, so KubeRay builds the new one (rayservice_controller.go, v1.5-1.7).
UPGRADE_TYPES = {"NewCluster": NEW_CLUSTER, "InPlace": UPGRADE_NONE}


def _muted(cluster_spec: Obj) -> Obj:
    # A deep copy through orjson: the same dicts and lists as copy.deepcopy for JSON objects, in a
    # fraction of the time (every render hashes the cluster). The hash below stays the stdlib's json:
    # it is stored on live RayServices and RayClusters, and must not change with an upgrade.
    spec: Obj = orjson.loads(orjson.dumps(cluster_spec))
    head_pod = spec.get("headGroupSpec", {}).get("template", {}).get("spec", {})
    head_pod.pop("tolerations", None)
    head_pod.pop("schedulingGates", None)
    for group in spec.get("workerGroupSpecs", []):
        for key in ("replicas", "minReplicas", "maxReplicas"):
            group.pop(key, None)
        # Go serialises the (non-pointer) ScaleStrategy struct as {} whether or not it was set.
        strategy = group.pop("scaleStrategy", None) or {}
        strategy.pop("workersToDelete", None)
        if strategy:
            group["scaleStrategy"] = strategy
        pod = group.get("template", {}).get("spec", {})
        pod.pop("tolerations", None)
        pod.pop("schedulingGates", None)
    spec.pop("upgradeStrategy", None)
    return spec


def hash_without_replicas(cluster_spec: Obj) -> str:
    """Equal for two RayCluster specs exactly when KubeRay's hash is (not the same digits: Go's JSON
    of its typed structs orders and defaults differently; only equality matters here)."""
    return json.dumps(_muted(cluster_spec), sort_keys=True, separators=(",", ":"))


def cluster_hash(cluster_spec: Obj) -> str:
    """A short digest of `hash_without_replicas`: equal exactly when KubeRay's hashes are equal."""
    return hashlib.sha256(hash_without_replicas(cluster_spec).encode()).hexdigest()[:16]


def cluster_action(old_cluster_spec: Obj, new_cluster_spec: Obj, upgrade_type: str | None) -> Action:
    """What KubeRay does to the running RayCluster when the RayService's rayClusterConfig changes.

    `upgrade_type` is the RayService's `spec.upgradeStrategy.type`; None (unset) means zero-downtime
    upgrades, KubeRay's default (`ENABLE_ZERO_DOWNTIME` unset counts as true).
    """
    if hash_without_replicas(old_cluster_spec) == hash_without_replicas(new_cluster_spec):
        return "none"
    old_groups = len(old_cluster_spec.get("workerGroupSpecs", []))
    appended = {
        **new_cluster_spec,
        "workerGroupSpecs": new_cluster_spec.get("workerGroupSpecs", [])[:old_groups],
    }
    if len(new_cluster_spec.get("workerGroupSpecs", [])) >= old_groups and hash_without_replicas(
        old_cluster_spec
    ) == hash_without_replicas(appended):
        return "update"
    if upgrade_type is None or upgrade_type == NEW_CLUSTER:
        return "new-cluster"
    return "blocked"
