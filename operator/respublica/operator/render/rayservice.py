"""The KubeRay RayService that runs the model: Ray Serve LLM on vLLM, autoscaled by Ray.

Two layers of autoscaling, both Ray's: Ray Serve adds and removes model replicas (the spec's
scaling), and Ray's in-tree autoscaler adds and removes the worker pods those replicas need. One
replica is one worker pod holding all of its GPUs, so the worker group's bounds are the replica
bounds. The head takes no GPU: it runs Ray's control plane, the Serve proxy and the OpenAI ingress,
and stays up when the model scales to zero.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from respublica.api.engine_args import build_serving_args
from respublica.api.models import ModelDeployment
from respublica.operator.kuberay_model import UPGRADE_TYPES, cluster_hash
from respublica.operator.render.bootstrap import ray_bootstrap_mount, ray_bootstrap_volume
from respublica.operator.render.common import (
    SERVE_APP_NAME,
    Obj,
    container_security_context,
    image_ref,
    labels,
    metadata,
    pod_security_context,
    pull_secrets,
    rayservice_name,
    usage_stats_env,
)
from respublica.operator.render.kinds import RAYSERVICE
from respublica.operator.render.options import RenderOptions
from respublica.operator.render.storage import (
    AdapterStorageAccess,
    ModelStorage,
    adapter_storage_access,
    ca_bundle,
    download_env,
    model_storage,
)

COMPONENT = "ray"

# On the RayService and, copied by KubeRay, on each RayCluster: `kuberay_model.cluster_hash` of the
# rayClusterConfig it was rendered with.
CLUSTER_HASH_ANNOTATION = "respublica.dev/cluster-hash"
HEAD_COMPONENT = "ray-head"
WORKER_COMPONENT = "ray-worker"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"
# The ingress replica's Ray CPUs; the head offers exactly this, so no model replica lands there.
INGRESS_NUM_CPUS = 1
# Ray CPUs one model replica holds: its LLMServer actor, plus on CPU the engine's own bundle.
REPLICA_RAY_CPUS = {"gpu": 1, "cpu": 2}
# Room beside the replica for Ray's small helper actors (the prefix tree of prefix-aware routing),
# which need a free CPU to be placed.
HELPER_RAY_CPUS = 1
# A custom Ray resource only the head offers; the ingress replica asks for one unit, so it always
# lands on the head (which stays up at zero) and never keeps a GPU worker from scaling down.
INGRESS_RESOURCE = "respublica_ingress"
HEAD_INGRESS_UNITS = 100
# Ray Serve LLM's router timeout (ray/llm/_internal/serve/constants.py,
# DEFAULT_LLM_ROUTER_HTTP_TIMEOUT, read once at import; default 600 s): the ingress gives up on a
# request after this long, so it must cover a wake from zero. Set from scaling.wakeTimeoutSeconds.
ROUTER_TIMEOUT_ENV = "RAY_SERVE_LLM_ROUTER_HTTP_TIMEOUT"


def worker_group_name(md: ModelDeployment) -> str:
    return "gpu" if md.spec.resources.gpus > 0 else "cpu"


def serve_config(md: ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    """serveConfigV2 as data: one application, the OpenAI app of Ray Serve LLM with the engine args."""
    storage = model_storage(md, options)
    args = build_serving_args(
        md.spec,
        model_path=storage.model_path,
        accelerator="gpu",
        ingress_num_cpus=INGRESS_NUM_CPUS,
        ingress_resources={INGRESS_RESOURCE: 1},
    )
    return {
        # The port KubeRay's Serve service targets; Ray's own default is the same 8000.
        "http_options": {"host": "0.0.0.0", "port": options.serve_port},
        "applications": [
            {
                "name": SERVE_APP_NAME,
                "import_path": "ray.serve.llm:build_openai_app",
                "route_prefix": "/",
                "args": args,
            }
        ],
    }


def rayservice(md: ModelDeployment, options: RenderOptions) -> Obj:
    storage = model_storage(md, options)
    image = md.spec.image or image_ref(options.ray_image, options)
    cluster: Obj = {
        "rayVersion": options.ray_version,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": _autoscaler(options),
        "headGroupSpec": _head(md, options, image),
        "workerGroupSpecs": [_worker_group(md, options, image, storage)],
    }
    meta = metadata(md, rayservice_name(md), COMPONENT)
    # KubeRay copies the RayService's annotations onto each RayCluster it creates
    # (constructRayClusterForRayService), so the running cluster says which spec it was built from:
    # an InPlace upgrade compares it with this one (operator/in_place_upgrade.py).
    meta["annotations"][CLUSTER_HASH_ANNOTATION] = cluster_hash(cluster)
    return {
        **RAYSERVICE.type_meta(),
        "metadata": meta,
        "spec": {
            # Always written, so a re-render keeps it (KubeRay's default would be NewCluster).
            "upgradeStrategy": {"type": UPGRADE_TYPES[md.spec.upgrade.strategy]},
            # libyaml's dumper when PyYAML has it (same text, ~5x faster: this was most of a render).
            "serveConfigV2": yaml.dump(
                serve_config(md, options),
                Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                sort_keys=True,
            ),
            "rayClusterConfig": cluster,
        },
    }


def _env(storage: ModelStorage | None, adapters: AdapterStorageAccess) -> list[Obj]:
    env = usage_stats_env()
    if storage is not None and storage.offline:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    return env + adapters.env


def _env_from(adapters: AdapterStorageAccess) -> Obj:
    return {"envFrom": [dict(source) for source in adapters.env_from]} if adapters.env_from else {}


def _autoscaler(options: RenderOptions) -> Obj:
    return {
        "upscalingMode": "Default",
        "idleTimeoutSeconds": options.worker_idle_timeout_seconds,
        "env": usage_stats_env(),
        "resources": {
            "requests": {"cpu": options.autoscaler_cpu, "memory": options.autoscaler_memory},
            "limits": {"cpu": options.autoscaler_cpu, "memory": options.autoscaler_memory},
        },
        "securityContext": container_security_context(),
    }


def _ports(options: RenderOptions, *, head: bool) -> list[Obj]:
    ports = [("serve", options.serve_port), ("metrics", options.metrics_port)]
    if head:
        ports += [
            ("gcs", options.gcs_port),
            ("dashboard", options.dashboard_port),
            ("client", options.client_port),
        ]
    return [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports]


def _pod_spec(options: RenderOptions, containers: list[Obj], volumes: list[Obj], *, api_token: bool) -> Obj:
    spec: Obj = {
        # Only the head needs the API: its autoscaler sidecar scales the worker group through it,
        # with the service account and RBAC KubeRay creates for it.
        "automountServiceAccountToken": api_token,
        "securityContext": pod_security_context(options),
        "containers": containers,
    }
    if volumes:
        spec["volumes"] = volumes
    secrets = pull_secrets(options)
    if secrets:
        spec["imagePullSecrets"] = secrets
    return spec


def _head(md: ModelDeployment, options: RenderOptions, image: str) -> Obj:
    resources = {"cpu": options.head_cpu, "memory": options.head_memory}
    adapters = adapter_storage_access(md)
    # The head's ingress reads LoRA adapter listings from object storage, which may sit behind the
    # same private CA.
    ca = ca_bundle(md, options)
    container: Obj = {
        "name": "ray-head",
        "image": image,
        "imagePullPolicy": options.image_pull_policy,
        "ports": _ports(options, head=True),
        "env": [
            *_env(None, adapters),
            {"name": ROUTER_TIMEOUT_ENV, "value": str(md.spec.scaling.wake_timeout_seconds)},
            *(ca.env if ca is not None else []),
        ],
        **_env_from(adapters),
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": container_security_context(),
        "volumeMounts": [ray_bootstrap_mount(), *([ca.mount] if ca is not None else [])],
    }
    return {
        "rayStartParams": {
            "num-cpus": str(INGRESS_NUM_CPUS),
            "num-gpus": "0",
            # KubeRay passes this through to `ray start --resources`; it wants the JSON quoted.
            "resources": json.dumps(json.dumps({INGRESS_RESOURCE: HEAD_INGRESS_UNITS})),
            "dashboard-host": "0.0.0.0",
        },
        "template": {
            "metadata": {"labels": labels(md, HEAD_COMPONENT)},
            "spec": _pod_spec(
                options,
                [container],
                [ray_bootstrap_volume(md), *([ca.volume] if ca is not None else [])],
                api_token=True,
            ),
        },
    }


def _worker_group(md: ModelDeployment, options: RenderOptions, image: str, storage: ModelStorage) -> Obj:
    spec = md.spec
    gpus = spec.resources.gpus
    resources: dict[str, str] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    if gpus > 0:
        resources[GPU_RESOURCE] = str(gpus)
    ca = ca_bundle(md, options)
    mounts = [
        *storage.mounts,
        {"name": "dshm", "mountPath": "/dev/shm"},
        ray_bootstrap_mount(),
        *([ca.mount] if ca is not None else []),
    ]
    # vLLM's workers exchange tensors through shared memory; the container default is 64 MiB.
    volumes = [
        *storage.volumes,
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ray_bootstrap_volume(md),
        *([ca.volume] if ca is not None else []),
    ]
    adapters = adapter_storage_access(md)
    container: Obj = {
        "name": "ray-worker",
        "image": image,
        "imagePullPolicy": options.image_pull_policy,
        "ports": _ports(options, head=False),
        "env": _env(storage, adapters)
        + (download_env(md, options) if storage.downloads else [])
        + (ca.env if ca is not None else []),
        **_env_from(adapters),
        "resources": _worker_resources(resources, options, storage),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    pod = _pod_spec(options, [container], volumes, api_token=False)
    if storage.wait_for is not None:
        pod["initContainers"] = [_wait_for_cache(options, image, storage)]
    if spec.resources.gpu_product is not None:
        pod["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": GPU_PRODUCT_LABEL,
                                    "operator": "In",
                                    "values": [spec.resources.gpu_product],
                                }
                            ]
                        }
                    ]
                }
            }
        }
    if spec.resources.node_selector:
        pod["nodeSelector"] = dict(sorted(spec.resources.node_selector.items()))
    if spec.resources.tolerations:
        pod["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in spec.resources.tolerations
        ]
    start_params = {"num-cpus": str(worker_ray_cpus(md)), "num-gpus": str(gpus)}
    return {
        "groupName": worker_group_name(md),
        "replicas": spec.scaling.min_replicas,
        "minReplicas": spec.scaling.min_replicas,
        "maxReplicas": spec.scaling.max_replicas,
        "numOfHosts": 1,
        "rayStartParams": start_params,
        "template": {"metadata": {"labels": labels(md, WORKER_COMPONENT)}, "spec": pod},
    }


def _worker_resources(resources: dict[str, str], options: RenderOptions, storage: ModelStorage) -> Obj:
    """Requests = limits; a replica that downloads its weights itself (no cache volume) also asks
    for the scratch space they land in, so the kubelet places it where they fit and does not evict
    it mid-download."""
    out: Obj = {"requests": dict(resources), "limits": dict(resources)}
    if storage.downloads:
        out["requests"]["ephemeral-storage"] = options.download_scratch
    return out


def worker_ray_cpus(md: ModelDeployment) -> int:
    """The Ray CPUs a worker pod offers: enough for one replica and Ray's helpers, whatever its size.

    A GPU replica takes all of its pod's GPUs, so the GPUs keep it to one replica per pod. A CPU
    replica is held to one per pod by the Ray CPUs themselves: exactly one replica's worth plus the
    helpers' room, so a second replica does not fit (the engine still uses every core of the pod).
    """
    if md.spec.resources.gpus > 0:
        return max(_cpu_count(md.spec.resources.cpu), REPLICA_RAY_CPUS["gpu"] + HELPER_RAY_CPUS)
    return REPLICA_RAY_CPUS["cpu"] + HELPER_RAY_CPUS


def _cpu_count(quantity: str) -> int:
    """A CPU quantity (`8`, `0.5`, `500m`) rounded up to whole CPUs, as KubeRay does."""
    cores = int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return max(1, math.ceil(cores))


# Waits, bounded, for the download Job's marker, so vLLM never starts on a half-filled cache.
WAIT_SCRIPT = """\
import os, sys, time
path, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while not os.path.exists(path):
    if time.monotonic() > deadline:
        sys.exit(f"the model cache is still not filled ({path} missing): see the download Job")
    time.sleep(5)
"""


def _wait_for_cache(options: RenderOptions, image: str, storage: ModelStorage) -> Obj:
    assert storage.wait_for is not None
    return {
        "name": "wait-for-model-cache",
        "image": image,
        "imagePullPolicy": options.image_pull_policy,
        "command": ["python", "-c", WAIT_SCRIPT],
        "args": [storage.wait_for, str(options.download_wait_seconds)],
        "env": usage_stats_env(),
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "200m", "memory": "128Mi"},
        },
        "securityContext": container_security_context(),
        "volumeMounts": list(storage.mounts),
    }
