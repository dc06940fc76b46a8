"""What the operator decides for every ModelDeployment: images, ports, who may talk to the pods."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from types import MappingProxyType

from respublica.api.models import CacheSpec

RAY_VERSION = "2.60.0"
DEFAULT_RAY_IMAGE = f"docker.io/rayproject/ray-llm:{RAY_VERSION}-py311-cu128"


def _own_version() -> str:
    try:
        return version("respublica")
    except PackageNotFoundError:  # a source tree without an installed distribution
        return "0.1.0"


# The respublica image (images/respublica/Containerfile) at this version, as the chart publishes it.
DEFAULT_RESPUBLICA_IMAGE = f"ghcr.io/respublica-dev/respublica:{_own_version()}"

# Room for one model's weights: the scratch space of a replica that downloads them itself, and the
# operator's default cache volume (a 70B model in bfloat16 is about 140 GB).
WEIGHTS_SPACE = "200Gi"


def _labels(**labels: str) -> Mapping[str, str]:
    return MappingProxyType(dict(labels))


@dataclass(frozen=True)
class RenderOptions:
    """Operator-wide settings of the rendered objects. Every default works on a stock cluster."""

    # Ray + vLLM (Ray Serve LLM) image of the head and the replicas; a spec's `image` wins.
    ray_image: str = DEFAULT_RAY_IMAGE
    ray_version: str = RAY_VERSION
    # Runs the cache download Job; needs Python with huggingface_hub (the Ray LLM image has it).
    downloader_image: str = DEFAULT_RAY_IMAGE
    # The respublica image: the download Job's `verify` step runs `respublica digest --expect` in it, so
    # the files are hashed by the very code that defines the digest. The chart sets its own image.
    verifier_image: str = DEFAULT_RESPUBLICA_IMAGE
    # A registry (e.g. `registry.agency.example/mirror`) that replaces the registry of the default
    # images, for clusters that pull only from their own mirror. A spec's own `image` is left alone.
    image_registry: str | None = None
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()

    # Who may reach the Serve port: the respublica gateway's pods. None: the model's own namespace.
    gateway_namespace: str | None = "respublica-system"
    gateway_pod_labels: Mapping[str, str] = field(
        default_factory=lambda: _labels(**{"app.kubernetes.io/name": "respublica-gateway"})
    )
    # Who may reach the head's dashboard port (KubeRay submits the Serve config there) and its Serve
    # port (KubeRay's proxy health check): the pods with these labels in KubeRay's namespace, never
    # the labels alone. None: the model's own namespace. Default: where the KubeRay chart is
    # usually installed on a platform; set it to yours.
    kuberay_namespace: str | None = "kuberay-system"
    kuberay_pod_labels: Mapping[str, str] = field(
        default_factory=lambda: _labels(**{"app.kubernetes.io/name": "kuberay-operator"})
    )

    # Prometheus' namespace, admitted to every Ray pod's metrics port. None: no scraping.
    monitoring_namespace: str | None = "monitoring"

    serve_port: int = 8000
    dashboard_port: int = 8265
    gcs_port: int = 6379
    client_port: int = 10001
    metrics_port: int = 8080

    # The head runs Ray's control plane, the Serve proxy and the OpenAI ingress; no model replica.
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    autoscaler_cpu: str = "500m"
    autoscaler_memory: str = "512Mi"
    # How long an idle worker pod stays before Ray's autoscaler removes it.
    worker_idle_timeout_seconds: int = 60

    # The user and group of the Ray images (`ray`, uid 1000, group `users`).
    run_as_user: int = 1000
    run_as_group: int = 100
    fs_group: int = 100

    # Where weights are mounted in the pods.
    cache_mount_path: str = "/models"
    pvc_mount_root: str = "/mnt/pvc"
    # Secret (key `token`) holding a Hugging Face token for gated repositories; optional.
    hf_token_secret: str | None = None
    # A Hugging Face hub mirror (HF_ENDPOINT) for every hf:// download; a spec's model.endpoint wins.
    hf_endpoint: str | None = None
    # A CA bundle for downloads, (ConfigMap name, key) in each model's namespace; a spec's
    # model.caBundle wins.
    ca_bundle: tuple[str, str] | None = None
    # How long a replica waits for the cache download before its pod fails and restarts.
    download_wait_seconds: int = 6 * 3600
    download_backoff_limit: int = 4
    # Scratch space (ephemeral-storage request) of a replica that downloads its weights itself.
    download_scratch: str = WEIGHTS_SPACE
    # The cache a downloaded model with no spec.cache gets when it is created at minReplicas 0
    # (render/default_cache.py decides when). Size None: no default cache; storage class None: the
    # cluster's default class.
    default_cache_size: str | None = WEIGHTS_SPACE
    default_cache_storage_class: str | None = None
    default_cache_access_mode: str = CacheSpec.model_fields["access_mode"].default
