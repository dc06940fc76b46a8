"""What every child of a ModelDeployment shares: names, labels, owner, spec hash, security context."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from respublica.api.models import API_VERSION, KIND, ModelDeployment
from respublica.api.telemetry_env import TELEMETRY_OFF_ENV
from respublica.operator.render.options import RenderOptions

Obj = dict[str, Any]

SPEC_HASH_ANNOTATION = "respublica.dev/spec-hash"
MODEL_LABEL = "respublica.dev/model-deployment"
COMPONENT_LABEL = "respublica.dev/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "respublica"
DEFAULT_NAMESPACE = "default"

# The name of the one Serve application in serveConfigV2 (KubeRay reports status per application).
SERVE_APP_NAME = "llm"


def spec_hash(md: ModelDeployment) -> str:
    """A digest of the spec: equal specs (defaults applied) give equal hashes, on any machine."""
    canonical = json.dumps(
        md.spec.model_dump(by_alias=True, mode="json"), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def rayservice_name(md: ModelDeployment) -> str:
    return md.metadata.name


def serve_service_name(md: ModelDeployment) -> str:
    """KubeRay's Serve service of the RayService: the model's endpoint inside the cluster."""
    return f"{rayservice_name(md)}-serve-svc"


def namespace_of(md: ModelDeployment) -> str:
    return md.metadata.namespace or DEFAULT_NAMESPACE


def endpoint_url(md: ModelDeployment, options: RenderOptions | None = None) -> str:
    port = (options or RenderOptions()).serve_port
    return f"http://{serve_service_name(md)}.{namespace_of(md)}.svc:{port}"


def labels(md: ModelDeployment, component: str) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        MODEL_LABEL: md.metadata.name,
        COMPONENT_LABEL: component,
    }


def owner_references(md: ModelDeployment) -> list[Obj]:
    """The ModelDeployment as controller of its children, so deleting it deletes them.

    Without a uid (a file rendered for review, never applied) there is no owner to point at.
    """
    uid = (md.metadata.model_extra or {}).get("uid")
    if not uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": md.metadata.name,
            "uid": str(uid),
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def metadata(md: ModelDeployment, name: str, component: str) -> Obj:
    meta: Obj = {"name": name}
    if md.metadata.namespace:
        meta["namespace"] = md.metadata.namespace
    meta["labels"] = labels(md, component)
    meta["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(md)}
    owners = owner_references(md)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def container_security_context() -> Obj:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context(options: RenderOptions) -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": options.run_as_user,
        "runAsGroup": options.run_as_group,
        "fsGroup": options.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def usage_stats_env() -> list[Obj]:
    return [{"name": name, "value": value} for name, value in TELEMETRY_OFF_ENV.items()]


def image_ref(default: str, options: RenderOptions) -> str:
    """One of the operator's default images, moved to the override registry when there is one."""
    if not options.image_registry:
        return default
    first, sep, rest = default.partition("/")
    # A first path component with a dot or port, or `localhost`, is a registry host (as in Docker).
    repository = rest if sep and ("." in first or ":" in first or first == "localhost") else default
    return f"{options.image_registry.rstrip('/')}/{repository}"


def pull_secrets(options: RenderOptions) -> list[Obj]:
    return [{"name": name} for name in options.image_pull_secrets]
