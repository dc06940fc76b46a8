"""Who may open connections to the model's Ray pods: the gateway, the pods themselves, KubeRay.

Two policies, because Kubernetes unions them per pod: every Ray pod of the model admits the gateway
on the Serve port and the model's other Ray pods on any port (Ray's own traffic: GCS, object store,
workers); the head alone also admits the KubeRay operator on the dashboard port, where it submits the
Serve config and reads its status. Nothing else reaches these pods. Egress is left open (a replica
may fetch weights from the hub).
"""

from __future__ import annotations

from collections.abc import Mapping

from respublica.operator.api.models import ModelDeployment
from respublica.operator.render.common import MODEL_LABEL, Obj, metadata
from respublica.operator.render.options import RenderOptions

COMPONENT = "network-policy"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# Set by KubeRay on the pods it creates.
RAY_NODE_TYPE_LABEL = "ray.io/node-type"


def ray_pods_selector(md: ModelDeployment) -> dict[str, str]:
    """Both the head's and the workers' pods of this model (their templates carry the label)."""
    return {MODEL_LABEL: md.metadata.name}


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
    ray_pods = ray_pods_selector(md)
    pods_name, head_name = network_policy_names(md)
    pods_policy: Obj = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(md, pods_name, COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": ray_pods},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    # None: the gateway runs in the model's own namespace.
                    "from": [
                        _peer(options.gateway_namespace, options.gateway_pod_labels, any_namespace=False)
                    ],
                    "ports": [{"protocol": "TCP", "port": options.serve_port}],
                },
                {"from": [{"podSelector": {"matchLabels": dict(ray_pods)}}]},
            ],
        },
    }
    head_policy: Obj = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(md, head_name, COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": {**ray_pods, RAY_NODE_TYPE_LABEL: "head"}},
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
