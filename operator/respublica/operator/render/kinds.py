"""The kinds of children render can produce, declared once.

Everything that must know the children reads `CHILD_KINDS`: the render builders (apiVersion and
kind of each object), the reconciler (which kinds to prune), the kopf handlers (which kinds to
watch), the API client (their paths) and the RBAC test (which grants the operator needs). A new
child is one more entry here and one builder in render.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceKind:
    """A Kubernetes kind: its apiVersion (`group/version`, or `v1` for the core group), kind, plural."""

    api_version: str
    kind: str
    plural: str

    @property
    def group(self) -> str:
        """The API group; "" for the core group (as RBAC rules and kopf spell it)."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def api_prefix(self) -> str:
        """The URL prefix of its group version: /api/v1 for core, /apis/<group>/<version> otherwise."""
        return f"/apis/{self.api_version}" if self.group else f"/api/{self.version}"

    def type_meta(self) -> dict[str, str]:
        """The `apiVersion` and `kind` fields of an object of this kind."""
        return {"apiVersion": self.api_version, "kind": self.kind}


DOWNLOAD_JOB = ResourceKind("batch/v1", "Job", "jobs")
CACHE_CLAIM = ResourceKind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
NETWORK_POLICY = ResourceKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
RAYSERVICE = ResourceKind("ray.io/v1", "RayService", "rayservices")
# Ray's bootstrap config (render/bootstrap.py), mounted into the Ray pods.
CONFIG_MAP = ResourceKind("v1", "ConfigMap", "configmaps")

# Every kind render produces; the order is the order stale children are pruned in.
CHILD_KINDS: tuple[ResourceKind, ...] = (DOWNLOAD_JOB, CACHE_CLAIM, NETWORK_POLICY, RAYSERVICE, CONFIG_MAP)
