"""The rendered NetworkPolicies admit exactly the flow table of docs/render.md, and nothing else.

The table is read from the document itself, so the document and the policies cannot drift apart. A
small NetworkPolicy evaluator (the semantics of `networking.k8s.io/v1`: a pod selected by any
Ingress policy accepts a connection only if some rule of some selecting policy admits the peer and
the port; policies union) decides each (source pod, destination pod, port).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from respublica.api.models import ModelDeployment
from respublica.operator.render import RenderOptions, render
from respublica.operator.render.networkpolicy import NAMESPACE_NAME_LABEL

Obj = dict[str, Any]
REPO = Path(__file__).resolve().parents[3]
MODEL_NS = "ai"


@dataclasses.dataclass(frozen=True)
class Pod:
    namespace: str
    labels: tuple[tuple[str, str], ...]

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def _pod(namespace: str, **labels: str) -> Pod:
    return Pod(namespace, tuple(sorted(labels.items())))


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector: matchLabels and In/NotIn/Exists/DoesNotExist; `{}` selects all."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_admits(peer: Obj, policy_ns: str, source: Pod) -> bool:
    """podSelector alone: pods of the policy's namespace; namespaceSelector alone: every pod of those
    namespaces; both: pods matching both (an AND, in one peer)."""
    assert "ipBlock" not in peer, "the evaluator does not model ipBlock"
    ns_labels = {NAMESPACE_NAME_LABEL: source.namespace}
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif source.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], source.label_map)


def allowed(policies: list[Obj], source: Pod, dest: Pod, port: int) -> bool:
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == dest.namespace
        and "Ingress" in p["spec"]["policyTypes"]
        and selects(p["spec"]["podSelector"], dest.label_map)
    ]
    if not selecting:
        return True  # not isolated
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports):
                continue
            peers = rule.get("from")
            if not peers or any(
                _peer_admits(peer, policy["metadata"]["namespace"], source) for peer in peers
            ):
                return True
    return False


def test_the_evaluator_itself() -> None:
    """The evaluator's own semantics, on hand-written policies, so a bug there cannot pass silently."""
    policy = {
        "metadata": {"namespace": "ai"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "x"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "y"}}}], "ports": [{"port": 1}]},
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "ops"}},
                            "podSelector": {"matchLabels": {"app": "z"}},
                        }
                    ]
                },
            ],
        },
    }
    x, y, z = _pod("ai", app="x"), _pod("ai", app="y"), _pod("ops", app="z")
    assert allowed([policy], y, x, 1) and not allowed([policy], y, x, 2)
    assert not allowed([policy], _pod("other", app="y"), x, 1)  # podSelector alone: own namespace
    assert allowed([policy], z, x, 9) and not allowed([policy], _pod("ai", app="z"), x, 9)
    assert allowed([policy], _pod("ai"), y, 9)  # y is not selected, so not isolated


# --- the table ---------------------------------------------------------------------------------

PORTS = {"serve": 8000, "dashboard": 8265, "metrics": 8080, "gcs": 6379, "client": 10001}
# Ports Ray opens beyond the named ones (object manager, node manager, worker ports, dashboard agent).
RAY_OTHER_PORTS = (8076, 8077, 10002, 19999, 52365)
ALL_PORTS = tuple(PORTS.values()) + RAY_OTHER_PORTS


def flow_table() -> set[tuple[str, str, int]]:
    """(source, destination, port) of every row of docs/render.md's Traffic table."""
    text = (REPO / "docs" / "render.md").read_text()
    section = text.split("\n## Traffic\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "docs/render.md has no Traffic table"
    flows: set[tuple[str, str, int]] = set()
    for row in rows:
        source, dests, port = (cell.strip() for cell in row.strip("|").split("|")[:3])
        (source_name,) = re.findall(r"`([^`]+)`", source)
        ports = ALL_PORTS if port == "any" else (PORTS[re.findall(r"`([^`]+)`", port)[0]],)
        for dest, p in itertools.product(re.findall(r"`([^`]+)`", dests), ports):
            flows.add((source_name, dest, p))
    return flows


def _pods(md: ModelDeployment) -> dict[str, Pod]:
    """The table's names as pods, plus pods that must be kept out."""
    name = md.metadata.name
    model = {"respublica.dev/model-deployment": name, "app.kubernetes.io/managed-by": "respublica"}
    kuberay_label = {"app.kubernetes.io/name": "kuberay-operator"}
    return {
        "gateway": _pod("respublica-system", **{"app.kubernetes.io/name": "respublica-gateway"}),
        "kuberay": _pod("kuberay-system", **kuberay_label),
        "monitoring": _pod("monitoring", **{"app.kubernetes.io/name": "prometheus"}),
        "ray-head": _pod(MODEL_NS, **model, **{"respublica.dev/component": "ray-head"}),
        "ray-worker": _pod(MODEL_NS, **model, **{"respublica.dev/component": "ray-worker"}),
        # Kept out: the download Job (model label, other component), another model's Ray pods, a
        # pod that wears KubeRay's label outside KubeRay's namespace, the gateway's label elsewhere,
        # any other pod of the model's namespace.
        "download-job": _pod(MODEL_NS, **model, **{"respublica.dev/component": "model-cache-download"}),
        "other-model": _pod(
            MODEL_NS,
            **{**model, "respublica.dev/model-deployment": "other", "respublica.dev/component": "ray-head"},
        ),
        "fake-kuberay": _pod(MODEL_NS, **kuberay_label),
        "fake-gateway": _pod("tenant-a", **{"app.kubernetes.io/name": "respublica-gateway"}),
        "stranger": _pod(MODEL_NS, app="something"),
    }


@pytest.mark.parametrize("sample", ["one-gpu", "scale-to-zero", "tensor-parallel-cached"])
def test_rendered_policies_admit_exactly_the_flow_table(matrix: dict[str, Obj], sample: str) -> None:
    md = ModelDeployment.model_validate(matrix[sample])
    assert md.metadata.namespace == MODEL_NS
    policies = [obj for obj in render(md) if obj["kind"] == "NetworkPolicy"]
    table = flow_table()
    pods = _pods(md)
    assert {s for s, _, _ in table} | {d for _, d, _ in table} <= set(pods)
    for (source, src), dest in itertools.product(pods.items(), ("ray-head", "ray-worker")):
        for port in ALL_PORTS:
            expected = (source, dest, port) in table
            assert allowed(policies, src, pods[dest], port) == expected, (source, dest, port)
    # The download Job's pods are not Ray pods: nothing of Ray's reaches them through these policies.
    assert not any(selects(p["spec"]["podSelector"], pods["download-job"].label_map) for p in policies)


def test_the_table_has_the_flows_kuberay_needs() -> None:
    """The rows whose absence broke scale to zero (issue 9): KubeRay's proxy health check on the head."""
    table = flow_table()
    assert ("kuberay", "ray-head", 8000) in table
    assert ("kuberay", "ray-head", 8265) in table
    assert ("monitoring", "ray-worker", 8080) in table
    assert ("gateway", "ray-head", 8000) in table  # the head is an endpoint at zero replicas


def test_configured_namespaces_move_the_peers(matrix: dict[str, Obj]) -> None:
    md = ModelDeployment.model_validate(matrix["one-gpu"])
    options = RenderOptions(kuberay_namespace="ray-system", monitoring_namespace=None)
    policies = [obj for obj in render(md, options) if obj["kind"] == "NetworkPolicy"]
    pods = _pods(md)
    moved = _pod("ray-system", **{"app.kubernetes.io/name": "kuberay-operator"})
    assert allowed(policies, moved, pods["ray-head"], 8000)
    assert not allowed(policies, pods["kuberay"], pods["ray-head"], 8000)
    assert not allowed(policies, pods["monitoring"], pods["ray-worker"], 8080)
