"""Worker-group bounds and tolerations the operator carries to the running RayCluster itself.

KubeRay never does: its RayCluster hash leaves out each worker group's `replicas`, `minReplicas`,
`maxReplicas` and tolerations (`kuberay_model.hash_without_replicas`), so after a change of
`scaling.minReplicas/maxReplicas` or `resources.tolerations` the RayService says one thing and the
running RayCluster, which the autoscaler and KubeRay's pod reconciler read, keeps the old. Raising
`maxReplicas` would add no GPU pod; lowering `minReplicas` to 0 would never free the last GPU.

The operator therefore patches the active (and any pending) RayCluster's worker groups to the
rendered bounds and tolerations when they differ. The patch is a JSON patch guarded by `test` ops
on the resourceVersion and each group's name, so a concurrent write (the autoscaler moving
`replicas`) makes it fail cleanly and the next reconcile tries again. `replicas` is clamped into the
new bounds, so a lowered maximum or raised minimum takes effect without waiting for the autoscaler.
Tolerations reach new pods only; running pods keep theirs (a pod's tolerations can only grow).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from respublica.api.kube_client import ApiError, KubeClient
from respublica.operator.render.kinds import ResourceKind

Obj = dict[str, Any]
Logger = logging.Logger | logging.LoggerAdapter[Any]
RAYCLUSTER = ResourceKind("ray.io/v1", "RayCluster", "rayclusters")


def raycluster_path(namespace: str, name: str) -> str:
    return f"{RAYCLUSTER.api_prefix}/namespaces/{namespace}/{RAYCLUSTER.plural}/{name}"


def cluster_names(rayservice: Mapping[str, Any] | None) -> list[str]:
    """The RayClusters KubeRay runs for a RayService: the active one and any pending one."""
    status = (rayservice or {}).get("status") or {}
    names = []
    for key in ("activeServiceStatus", "pendingServiceStatus"):
        name = (status.get(key) or {}).get("rayClusterName")
        if name:
            names.append(str(name))
    return names


def bounds_patch(want_cluster_spec: Mapping[str, Any], live_cluster: Mapping[str, Any]) -> list[Obj]:
    """The JSON patch that brings the live RayCluster's worker-group bounds and tolerations to the
    rendered ones; [] when they agree. Groups are matched by name; a group the live cluster lacks
    (or a reordered one) is left to KubeRay, which updates the cluster for appended groups."""
    live_groups = list((live_cluster.get("spec") or {}).get("workerGroupSpecs") or [])
    ops: list[Obj] = []
    for want in want_cluster_spec.get("workerGroupSpecs") or []:
        index = next((i for i, g in enumerate(live_groups) if g.get("groupName") == want["groupName"]), None)
        if index is None:
            continue
        live = live_groups[index]
        base = f"/spec/workerGroupSpecs/{index}"
        group_ops: list[Obj] = []
        low, high = int(want["minReplicas"]), int(want["maxReplicas"])
        for key, value in (("minReplicas", low), ("maxReplicas", high)):
            if live.get(key) != value:
                group_ops.append({"op": "add", "path": f"{base}/{key}", "value": value})
        replicas = live.get("replicas")
        clamped = min(max(int(replicas if replicas is not None else low), low), high)
        if replicas != clamped:
            group_ops.append({"op": "add", "path": f"{base}/replicas", "value": clamped})
        want_tolerations = ((want.get("template") or {}).get("spec") or {}).get("tolerations")
        live_tolerations = ((live.get("template") or {}).get("spec") or {}).get("tolerations")
        if (want_tolerations or None) != (live_tolerations or None):
            path = f"{base}/template/spec/tolerations"
            if want_tolerations:
                group_ops.append({"op": "add", "path": path, "value": list(want_tolerations)})
            else:
                group_ops.append({"op": "remove", "path": path})
        if group_ops:
            ops.append({"op": "test", "path": f"{base}/groupName", "value": want["groupName"]})
            ops.extend(group_ops)
    if not ops:
        return []
    version = (live_cluster.get("metadata") or {}).get("resourceVersion")
    guard = [{"op": "test", "path": "/metadata/resourceVersion", "value": version}] if version else []
    return guard + ops


async def carry_bounds(
    kube: KubeClient,
    want_rayservice: Mapping[str, Any],
    live_rayservice: Mapping[str, Any] | None,
    logger: Logger,
) -> list[str]:
    """Patch each running RayCluster of the RayService whose bounds or tolerations differ from the
    rendered ones; the names patched. A refused or failed patch is logged and left to the next
    reconcile (the status is not at stake: Ray Serve still runs within the old bounds)."""
    namespace = str(want_rayservice["metadata"]["namespace"])
    want_cluster = want_rayservice["spec"]["rayClusterConfig"]
    patched: list[str] = []
    for name in cluster_names(live_rayservice):
        path = raycluster_path(namespace, name)
        try:
            live = await kube.request("GET", path)
            if live is None:
                continue
            ops = bounds_patch(want_cluster, live)
            if not ops:
                continue
            logger.info(f"Patching RayCluster {namespace}/{name}: worker-group bounds or tolerations differ.")
            await kube.request("PATCH", path, body=ops, content_type="application/json-patch+json")
            patched.append(name)
        except ApiError as exc:
            logger.warning(
                f"Could not carry the replica bounds to RayCluster {namespace}/{name}: {exc.message}"
            )
    return patched
