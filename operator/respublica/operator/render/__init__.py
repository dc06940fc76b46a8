"""ModelDeployment -> Kubernetes objects: a KubeRay RayService, NetworkPolicies, the model cache.

The kinds it can produce are declared once, in `CHILD_KINDS` (render/kinds.py).

`render` is pure: the same ModelDeployment and options give the same objects, byte for byte.
"""

from respublica.operator.render.assemble import render
from respublica.operator.render.cache import download_job_name
from respublica.operator.render.checks import RenderError
from respublica.operator.render.common import (
    COMPONENT_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MODEL_LABEL,
    SERVE_APP_NAME,
    SPEC_HASH_ANNOTATION,
    endpoint_url,
    owner_references,
    rayservice_name,
    serve_service_name,
    spec_hash,
)
from respublica.operator.render.kinds import (
    CACHE_CLAIM,
    CHILD_KINDS,
    DOWNLOAD_JOB,
    NETWORK_POLICY,
    RAYSERVICE,
    ResourceKind,
)
from respublica.operator.render.networkpolicy import network_policy_names
from respublica.operator.render.options import RenderOptions
from respublica.operator.render.rayservice import worker_group_name
from respublica.operator.render.storage import cache_claim_name

__all__ = [
    "CACHE_CLAIM",
    "CHILD_KINDS",
    "COMPONENT_LABEL",
    "DOWNLOAD_JOB",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "MODEL_LABEL",
    "NETWORK_POLICY",
    "RAYSERVICE",
    "SERVE_APP_NAME",
    "SPEC_HASH_ANNOTATION",
    "RenderError",
    "RenderOptions",
    "ResourceKind",
    "cache_claim_name",
    "download_job_name",
    "endpoint_url",
    "network_policy_names",
    "owner_references",
    "rayservice_name",
    "render",
    "serve_service_name",
    "spec_hash",
    "worker_group_name",
]
