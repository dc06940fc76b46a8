"""Who may open connections to the model's Ray pods: the gateway, the pods themselves, KubeRay.

The policies select the Ray pods by their component label, not by the model label alone: the cache
download Job's pods carry the model label too and must not be admitted to Ray's ports.

Two policies, because Kubernetes unions them per pod: every Ray pod of the model admits the gateway
on the Serve port and the model's other Ray pods on any port (Ray's own traffic: GCS, object store,
workers); the head alone also admits the KubeRay operator on the dashboard port, where it submits the
Serve config and reads its status. Nothing else reaches these pods. Egress is left open (a replica
may fetch weights from the hub).
"""

from __future__ import annotations

from collections.abc import Mapping

from respublica.api.models import ModelDeployment
from respublica.operator.render.common import COMPONENT_LABEL, MODEL_LABEL, Obj, metadata
from respublica.operator.render.kinds import NETWORK_POLICY
from respublica.operator.render.options import RenderOptions
from respublica.operator.render.rayservice import HEAD_COMPONENT, WORKER_COMPONENT

COMPONENT = "network-policy"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def ray_pods_selector(md: ModelDeployment) -> Obj:
    """The head's and the workers' pods of this model (their templates carry both labels), nothing else."""
    return {
        "matchLabels": {MODEL_LABEL: md.metadata.name},
        "matchExpressions": [
            {"key": COMPONENT_LABEL, "operator": "In", "values": [HEAD_COMPONENT, WORKER_COMPONENT]}
        ],
    }


def ray_head_selector(md: ModelDeployment) -> Obj:
    """The head's pod of this model only."""
    return {"matchLabels": {MODEL_LABEL: md.metadata.name, COMPONENT_LABEL: HEAD_COMPONENT}}


def network_policy_names(md: ModelDeployment) -> tuple[str, str]:
    """The policy for every Ray pod of the model, and the head's own."""
    return f"{md.metadata.name}-ray", f"{md.metadata.name}-ray-head"


def _peer(namespace: str | None, pod_labels: Mapping[str, str], *, any_namespace: bool) -> Obj:
    peer: Obj = {"podSelector": {"matchLabels": dict(sorted(pod_labels.items()))}}
    if namespace is not None:
        peer["namespaceSelector"] = {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}
    elif any_namespace:
        peer["namespaceSelector"] = {}
    return peer


def network_policies(md: ModelDeployment, options: RenderOptions) -> list[Obj]:
    pods_name, head_name = network_policy_names(md)
    pods_policy: Obj = {
        **NETWORK_POLICY.type_meta(),
        "metadata": metadata(md, pods_name, COMPONENT),
        "spec": {
            "podSelector": ray_pods_selector(md),
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    # None: the gateway runs in the model's own namespace.
                    "from": [
                        _peer(options.gateway_namespace, options.gateway_pod_labels, any_namespace=False)
                    ],
                    "ports": [{"protocol": "TCP", "port": options.serve_port}],
                },
                {"from": [{"podSelector": ray_pods_selector(md)}]},
            ],
        },
    }
    head_policy: Obj = {
        **NETWORK_POLICY.type_meta(),
        "metadata": metadata(md, head_name, COMPONENT),
        "spec": {
            "podSelector": ray_head_selector(md),
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        _peer(options.kuberay_namespace, options.kuberay_pod_labels, any_namespace=True)
                    ],
                    "ports": [{"protocol": "TCP", "port": options.dashboard_port}],
                }
            ],
        },
    }
    return [pods_policy, head_policy]
