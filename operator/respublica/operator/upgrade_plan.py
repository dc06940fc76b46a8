"""What a change of a ModelDeployment does to the running model, decided before it is applied (pure).

`respublica render --diff OLD NEW` renders both files and asks this module. The answer follows
KubeRay's own rules as `kuberay_model.cluster_action` models them, plus what the operator adds: it
patches worker-group bounds and tolerations itself (raycluster_bounds) and, with
`spec.upgrade.strategy: InPlace`, deletes the running RayCluster for KubeRay to rebuild
(in_place_upgrade).

Both RayServices must be rendered as the operator would render them: NEW with the live facts of
OLD's RayService (`render(..., live=live_facts(old))`), so a model's default cache stays as it was
created (render/default_cache.py) and a change of minReplicas alone is `scaling`, never
`new-cluster`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml

from respublica.operator.kuberay_model import cluster_action

Obj = dict[str, Any]
Kind = Literal["none", "serve", "scaling", "update", "new-cluster", "in-place"]


@dataclass(frozen=True)
class Plan:
    kind: Kind
    message: str


def _bounds(cluster: Obj) -> list[Any]:
    return [
        (
            g.get("minReplicas"),
            g.get("maxReplicas"),
            (g.get("template") or {}).get("spec", {}).get("tolerations"),
        )
        for g in cluster.get("workerGroupSpecs") or []
    ]


# Fields Ray Serve applies to running replicas without restarting them (a "lightweight" config update,
# ray `serve/_private/deployment_state.py`, DeploymentVersion's `requires_actor_restart`).
_LIGHTWEIGHT = {"autoscaling_config", "num_replicas", "max_ongoing_requests"}


def _without_lightweight(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_lightweight(v) for k, v in node.items() if k not in _LIGHTWEIGHT}
    if isinstance(node, list):
        return [_without_lightweight(v) for v in node]
    return node


def _serve_restarts(old_text: str | None, new_text: str | None) -> bool:
    """Whether the Serve config change goes beyond what Serve applies without restarting replicas."""
    old = yaml.safe_load(old_text or "") or {}
    new = yaml.safe_load(new_text or "") or {}
    return bool(_without_lightweight(old) != _without_lightweight(new))


def plan(old_rayservice: Obj, new_rayservice: Obj) -> Plan:
    """What applying `new_rayservice` over a running `old_rayservice` does (both as rendered)."""
    old_cluster = old_rayservice["spec"]["rayClusterConfig"]
    new_cluster = new_rayservice["spec"]["rayClusterConfig"]
    upgrade_type = (new_rayservice["spec"].get("upgradeStrategy") or {}).get("type")
    action = cluster_action(old_cluster, new_cluster, upgrade_type)
    serve_changed = old_rayservice["spec"].get("serveConfigV2") != new_rayservice["spec"].get("serveConfigV2")
    serve_note = (
        " The Serve config changes too and is applied once the cluster serves." if serve_changed else ""
    )
    if action == "new-cluster":
        return Plan(
            "new-cluster",
            "builds a new Ray cluster beside the running one (spec.upgrade.strategy NewCluster): no "
            "downtime, but its GPUs are held twice until the new cluster serves." + serve_note,
        )
    if action == "blocked":
        return Plan(
            "in-place",
            "recreates the Ray cluster in place (spec.upgrade.strategy InPlace): the operator deletes it "
            "and KubeRay rebuilds it; downtime until it serves, no extra GPUs." + serve_note,
        )
    if action == "update":
        return Plan(
            "update", "updates the running RayCluster in place (worker groups appended)." + serve_note
        )
    if serve_changed and _serve_restarts(
        old_rayservice["spec"].get("serveConfigV2"), new_rayservice["spec"].get("serveConfigV2")
    ):
        return Plan(
            "serve",
            "changes only Serve: the running cluster reloads the application (engine settings restart "
            "the replicas; with one replica the model does not answer while it reloads).",
        )
    if serve_changed or _bounds(old_cluster) != _bounds(new_cluster):
        return Plan(
            "scaling",
            "changes only replica bounds, autoscaling or tolerations: Ray Serve applies its part to "
            "the running replicas and the operator patches the worker-group bounds and tolerations into "
            "the running RayCluster; nothing restarts.",
        )
    return Plan("none", "changes nothing that runs.")
