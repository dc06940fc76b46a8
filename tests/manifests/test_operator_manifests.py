"""manifests/operator: valid Kubernetes objects (strict schemas), least privilege, a hardened pod, and
files that `kubectl apply -f <folder>/` (alphabetical order) applies in a working order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from helpers import kmock_api as kapi
from helpers.rbac import grants

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
ROOT = MANIFESTS / "operator"
VERSIONS = ["1.29", "1.33"]
# What must exist before what: the namespace before anything in it, the account and its grants and
# the configuration before the pods that use them (the rest in any order).
APPLY_RANK = {
    "Namespace": 0,
    "ServiceAccount": 1,
    "ClusterRole": 2,
    "ClusterRoleBinding": 2,
    "Role": 2,
    "RoleBinding": 2,
    "ConfigMap": 3,
    "Deployment": 4,
    "StatefulSet": 4,
    "Service": 4,
    "HorizontalPodAutoscaler": 4,
    "PodDisruptionBudget": 4,
    "NetworkPolicy": 4,
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(ROOT.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((str(path.relative_to(ROOT)), doc))
    assert docs, f"no manifests under {ROOT}"
    return docs


def one(kind: str, name: str = "respublica-operator", where: str | None = None) -> dict[str, Any]:
    found = [d for p, d in documents() if d["kind"] == kind and (where is None or p == where)]
    assert len(found) == 1, (kind, [p for p, d in documents() if d["kind"] == kind])
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("path", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_manifest_is_valid_strictly(path: str, doc: dict[str, Any], version: str) -> None:
    assert kubernetes_validate.validate(doc, version, strict=True) == version


@pytest.mark.parametrize("folder", ["operator", "gateway"])
def test_kubectl_applies_the_folder_in_a_working_order(folder: str) -> None:
    """`kubectl apply -f manifests/<folder>/` reads the folder's files in name order (not recursive)."""
    files = sorted((MANIFESTS / folder).glob("*.yaml"))
    assert files and all(path.name[:2].isdigit() and path.name[2] == "-" for path in files), files
    ranks = [APPLY_RANK[doc["kind"]] for path in files for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert ranks == sorted(ranks) and ranks[0] == 0, [p.name for p in files]
    assert not (MANIFESTS / folder / "kustomization.yaml").exists()  # kubectl -f would send it to the API


def test_cluster_role_grants_exactly_what_the_operator_uses() -> None:
    role = one("ClusterRole")
    assert grants(role) == kapi.NEEDED
    assert all("*" not in str(rule) for rule in role["rules"])


def test_namespaced_role_matches_the_cluster_role() -> None:
    assert grants(one("Role", where="namespaced/rbac.yaml")) == grants(one("ClusterRole"))


def test_bindings_point_at_the_service_account() -> None:
    sa = one("ServiceAccount")
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        binding = one(kind)
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": sa["metadata"]["name"],
                "namespace": sa["metadata"]["namespace"],
            }
        ]


def test_deployment_is_one_recreated_hardened_replica() -> None:
    deployment = one("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["args"][0] == "operator"
    liveness = container["args"][container["args"].index("--liveness") + 1]
    probe = container["livenessProbe"]["httpGet"]
    assert liveness.endswith(probe["path"])
    port = next(p for p in container["ports"] if p["name"] == probe["port"])
    assert f":{port['containerPort']}/" in liveness
    assert "limits" in container["resources"] and "requests" in container["resources"]
