"""Who may open connections to the model's Ray pods: exactly the flows of docs/render.md's flow table.

The policies select the Ray pods by their component label, not by the model label alone: the cache
download Job's pods carry the model label too and must not be admitted to Ray's ports.

Two policies, because Kubernetes unions them per pod:

- every Ray pod of the model admits the gateway on the Serve port (KubeRay's serve Service sends it
  to any pod labelled `ray.io/serve=true`, head or worker), the model's other Ray pods on any port
  (GCS, raylets, object store, worker ports), and the monitoring namespace on the metrics port;
- the head alone also admits the KubeRay operator on the dashboard port (it submits the Serve config
  and reads its status: `ray-operator/controllers/ray/utils/dashboard_httpclient.go`) and on the
  Serve port: `RayServiceReconciler.updateHeadPodServeLabel` (`rayservice_controller.go`) GETs
  `http://<head pod IP>:<serve port>/-/healthz` itself and only then labels the head
  `ray.io/serve=true`. Without that flow the head never becomes an endpoint, which at zero replicas
  means the serve Service has none and KubeRay reports `ZeroServeEndpoints`.

KubeRay is selected by its namespace AND its pod labels, never by a pod label alone (a label is
something any pod in any namespace, Ray's own included, can carry). Egress is left open (a replica
may fetch weights from the hub; the head's autoscaler talks to the API server).
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


def _namespace_selector(namespace: str) -> Obj:
    return {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}


def _peer(namespace: str | None, pod_labels: Mapping[str, str]) -> Obj:
    """Pods with these labels in that namespace; None: in the policy's (the model's) own namespace."""
    peer: Obj = {"podSelector": {"matchLabels": dict(sorted(pod_labels.items()))}}
    if namespace is not None:
        peer["namespaceSelector"] = _namespace_selector(namespace)
    return peer


def _tcp(*ports: int) -> list[Obj]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def network_policies(md: ModelDeployment, options: RenderOptions) -> list[Obj]:
    pods_name, head_name = network_policy_names(md)
    pods_rules: list[Obj] = [
        {
            "from": [_peer(options.gateway_namespace, options.gateway_pod_labels)],
            "ports": _tcp(options.serve_port),
        },
        # Ray's own traffic between the model's pods: GCS, raylets, object store, worker ports.
        {"from": [{"podSelector": ray_pods_selector(md)}]},
    ]
    if options.monitoring_namespace is not None:
        pods_rules.append(
            {
                "from": [{"namespaceSelector": _namespace_selector(options.monitoring_namespace)}],
                "ports": _tcp(options.metrics_port),
            }
        )
    pods_policy: Obj = {
        **NETWORK_POLICY.type_meta(),
        "metadata": metadata(md, pods_name, COMPONENT),
        "spec": {"podSelector": ray_pods_selector(md), "policyTypes": ["Ingress"], "ingress": pods_rules},
    }
    head_policy: Obj = {
        **NETWORK_POLICY.type_meta(),
        "metadata": metadata(md, head_name, COMPONENT),
        "spec": {
            "podSelector": ray_head_selector(md),
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [_peer(options.kuberay_namespace, options.kuberay_pod_labels)],
                    # The dashboard (Serve config, status) and the Serve proxy's /-/healthz.
                    "ports": _tcp(options.dashboard_port, options.serve_port),
                }
            ],
        },
    }
    return [pods_policy, head_policy]
