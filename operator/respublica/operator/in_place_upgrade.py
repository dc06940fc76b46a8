"""spec.upgrade.strategy InPlace: the operator deletes the running RayCluster so KubeRay rebuilds it.

With the RayService's `upgradeStrategy.type: None` KubeRay never applies a pod-template change to a
running cluster (`shouldPrepareNewCluster` needs zero-downtime upgrades, `isZeroDowntimeUpgradeEnabled`
in kuberay `ray-operator/controllers/ray/rayservice_controller.go`), and it does not update the
cluster in place either (`shouldUpdateCluster` only for appended worker groups). But when neither an
active nor a pending RayCluster exists, `shouldPrepareNewCluster` answers yes before it looks at the
strategy: deleting the active cluster makes KubeRay build one from the current spec. That is the
InPlace upgrade: downtime until the new cluster serves, no second set of GPUs.

Which spec a running RayCluster was built from is read from the `respublica.dev/cluster-hash`
annotation KubeRay copied from the RayService when it created the cluster
(`constructRayClusterForRayService`). A cluster without it (created before respublica wrote it) is
never deleted: the operator cannot tell whether it is stale.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from respublica.api.kube_client import ApiError, KubeClient
from respublica.operator.kuberay_model import UPGRADE_NONE
from respublica.operator.raycluster_bounds import raycluster_path
from respublica.operator.render.rayservice import CLUSTER_HASH_ANNOTATION

Logger = logging.Logger | logging.LoggerAdapter[Any]


def _annotation(obj: Mapping[str, Any] | None) -> str | None:
    value = (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(CLUSTER_HASH_ANNOTATION)
    return str(value) if value else None


def stale_active_cluster(
    want_rayservice: Mapping[str, Any],
    live_rayservice: Mapping[str, Any] | None,
    live_cluster: Mapping[str, Any] | None,
) -> str | None:
    """The active RayCluster's name when an InPlace upgrade must delete it; None otherwise (pure).

    Only with `upgradeStrategy.type: None`, only when KubeRay has no pending cluster (one is being
    built already), only when the running cluster carries a hash and it differs from the rendered one.
    """
    if ((want_rayservice.get("spec") or {}).get("upgradeStrategy") or {}).get("type") != UPGRADE_NONE:
        return None
    status = (live_rayservice or {}).get("status") or {}
    if (status.get("pendingServiceStatus") or {}).get("rayClusterName"):
        return None
    active = (status.get("activeServiceStatus") or {}).get("rayClusterName")
    if not active or live_cluster is None or (live_cluster.get("metadata") or {}).get("deletionTimestamp"):
        return None
    running, wanted = _annotation(live_cluster), _annotation(want_rayservice)
    if running is None or wanted is None or running == wanted:
        return None
    return str(active)


async def upgrade_in_place(
    kube: KubeClient,
    want_rayservice: Mapping[str, Any],
    live_rayservice: Mapping[str, Any] | None,
    logger: Logger,
) -> str | None:
    """Delete the active RayCluster when an InPlace upgrade needs it; the name deleted, or None."""
    if ((want_rayservice.get("spec") or {}).get("upgradeStrategy") or {}).get("type") != UPGRADE_NONE:
        return None
    active = (((live_rayservice or {}).get("status") or {}).get("activeServiceStatus") or {}).get(
        "rayClusterName"
    )
    if not active:
        return None
    namespace = str(want_rayservice["metadata"]["namespace"])
    path = raycluster_path(namespace, str(active))
    try:
        live = await kube.request("GET", path)
        name = stale_active_cluster(want_rayservice, live_rayservice, live)
        if name is None:
            return None
        logger.info(
            f"InPlace upgrade: deleting RayCluster {namespace}/{name} (built from another spec); "
            "KubeRay recreates it from the current one. The model does not answer until it serves."
        )
        await kube.request("DELETE", path)
        return name
    except ApiError as exc:
        logger.warning(f"InPlace upgrade: could not delete RayCluster {namespace}/{active}: {exc.message}")
        return None
