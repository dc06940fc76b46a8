"""What render makes of a ModelDeployment: the objects, their wiring, and the guarantees on every child."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from respublica.api.engine_args import build_serving_args
from respublica.api.models import ModelDeployment
from respublica.operator.render import (
    MODEL_LABEL,
    SERVE_APP_NAME,
    SPEC_HASH_ANNOTATION,
    RenderOptions,
    cache_claim_name,
    download_job_name,
    endpoint_url,
    network_policy_names,
    rayservice_name,
    render,
    serve_service_name,
    spec_hash,
    worker_group_name,
)

Obj = dict[str, Any]


def _one(objects: list[Obj], kind: str) -> Obj:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


def _cluster(objects: list[Obj]) -> Obj:
    cluster: Obj = _one(objects, "RayService")["spec"]["rayClusterConfig"]
    return cluster


def _worker_pod(objects: list[Obj]) -> Obj:
    (group,) = _cluster(objects)["workerGroupSpecs"]
    pod: Obj = group["template"]["spec"]
    return pod


def _serve_config(objects: list[Obj]) -> Obj:
    config: Obj = yaml.safe_load(_one(objects, "RayService")["spec"]["serveConfigV2"])
    return config


def _containers(obj: Obj) -> list[Obj]:
    """Every container spec in an object, wherever it sits (pod templates, KubeRay's autoscaler)."""
    found: list[Obj] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers"):
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(obj)
    autoscaler = obj.get("spec", {}).get("rayClusterConfig", {}).get("autoscalerOptions")
    if autoscaler is not None:
        found.append(autoscaler)
    return found


def _pod_specs(obj: Obj) -> list[Obj]:
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "RayService":
        cluster = obj["spec"]["rayClusterConfig"]
        return [cluster["headGroupSpec"]["template"]["spec"]] + [
            g["template"]["spec"] for g in cluster["workerGroupSpecs"]
        ]
    return []


def test_render_is_deterministic(md: ModelDeployment) -> None:
    first = render(md)
    again = render(ModelDeployment.model_validate(md.to_dict()))
    assert json.dumps(first, sort_keys=False) == json.dumps(again, sort_keys=False)
    text = yaml.safe_dump_all(first)
    assert "&id" not in text, "objects share nested values (YAML anchors)"


def test_every_child_is_labelled_annotated_and_owned(md: ModelDeployment) -> None:
    uid = (md.metadata.model_extra or {}).get("uid")
    for obj in render(md):
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "respublica"
        assert meta["labels"][MODEL_LABEL] == md.metadata.name
        assert meta["annotations"][SPEC_HASH_ANNOTATION] == spec_hash(md)
        assert meta.get("namespace") == md.metadata.namespace
        if uid is None:
            assert "ownerReferences" not in meta
        else:
            assert meta["ownerReferences"] == [
                {
                    "apiVersion": "respublica.dev/v1alpha1",
                    "kind": "ModelDeployment",
                    "name": md.metadata.name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]


def test_render_for_review_has_no_owner(matrix: dict[str, Obj]) -> None:
    raw = matrix["one-gpu"]
    del raw["metadata"]["uid"]
    for obj in render(ModelDeployment.model_validate(raw)):
        assert "ownerReferences" not in obj["metadata"]


def test_every_container_is_locked_down(md: ModelDeployment) -> None:
    for obj in render(md):
        for pod in _pod_specs(obj):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for pod in _pod_specs(obj)[1:] if obj["kind"] == "RayService" else _pod_specs(obj):
            # No API token, except on the Ray head, whose autoscaler sidecar scales the workers.
            assert pod["automountServiceAccountToken"] is False
        for container in _containers(obj):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert context.get("privileged", False) is False
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if obj["kind"] == "RayService":
                assert env["RAY_USAGE_STATS_ENABLED"] == "0"
                assert env["VLLM_NO_USAGE_STATS"] == "1"
                assert env["DO_NOT_TRACK"] == "1"


def test_serve_config_is_the_engine_mapping(md: ModelDeployment) -> None:
    """The same function maps the spec for the cluster and for `respublica up`."""
    config = _serve_config(render(md))
    (app,) = config["applications"]
    assert app["name"] == SERVE_APP_NAME
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    assert app["route_prefix"] == "/"
    assert config["http_options"]["port"] == 8000
    # Where the cluster's pods hold the weights, worked out here independently of render.
    source = md.spec.model.source
    model_path: str | None = None
    # A new hf:// model at minReplicas 0 gets the operator's default cache (render/default_cache.py).
    default_cache = source.startswith("hf://") and md.spec.scaling.min_replicas == 0
    if md.spec.cache is not None or default_cache:
        model_path = f"/models/hf/{source.removeprefix('hf://')}/{md.spec.model.revision}"
    elif source.startswith("pvc://"):
        claim, _, path = source.removeprefix("pvc://").partition("/")
        model_path = f"/mnt/pvc/{claim}/{path}".rstrip("/")
    expected = build_serving_args(
        md.spec, model_path=model_path, ingress_num_cpus=1, ingress_resources={"respublica_ingress": 1}
    )
    assert app["args"] == json.loads(json.dumps(expected))


def test_serve_config_validates_with_ray(md: ModelDeployment) -> None:
    serve_llm = pytest.importorskip("ray.serve.llm", reason="Ray Serve LLM is not installed")
    from ray.serve.schema import ServeDeploySchema

    config = _serve_config(render(md))
    # What KubeRay submits to the dashboard, checked by Ray Serve's own schema...
    deploy = ServeDeploySchema.model_validate(config)
    assert deploy.http_options.port == 8000
    assert [app.import_path for app in deploy.applications] == ["ray.serve.llm:build_openai_app"]
    # ...and the builder's arguments by Ray Serve LLM's.
    parsed = serve_llm.LLMServingArgs.model_validate(config["applications"][0]["args"])
    assert parsed.llm_configs[0].model_id == md.spec.model.served_name


def test_head_takes_no_gpu_and_autoscaler_is_on(md: ModelDeployment) -> None:
    cluster = _cluster(render(md))
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    (container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["serve"] == 8000
    assert ports["dashboard"] == 8265
    # Room for the OpenAI ingress (one Ray CPU) and nothing more: no model replica lands on the head.
    args = _serve_config(render(md))["applications"][0]["args"]
    assert (
        float(head["rayStartParams"]["num-cpus"])
        == args["ingress_deployment_config"]["ray_actor_options"]["num_cpus"]
    )


def test_one_worker_group_one_pod_per_replica(md: ModelDeployment) -> None:
    objects = render(md)
    (group,) = _cluster(objects)["workerGroupSpecs"]
    spec = md.spec
    assert group["minReplicas"] == spec.scaling.min_replicas
    assert group["maxReplicas"] == spec.scaling.max_replicas
    assert group["numOfHosts"] == 1
    (container,) = group["template"]["spec"]["containers"]
    resources = container["resources"]
    # Requests = limits, but for the downloading replica's scratch space (test_scale_to_zero).
    requests = {k: v for k, v in resources["requests"].items() if k != "ephemeral-storage"}
    assert requests == resources["limits"]
    assert resources["limits"]["cpu"] == spec.resources.cpu
    assert resources["limits"]["memory"] == spec.resources.memory
    if spec.resources.gpus > 0:
        assert group["groupName"] == "gpu"
        assert resources["limits"]["nvidia.com/gpu"] == str(spec.resources.gpus)
        assert group["rayStartParams"]["num-gpus"] == str(spec.resources.gpus)
        # One replica = one pod: a replica's GPUs (its tensor-parallel shards) are packed on one node.
        llm = _serve_config(objects)["applications"][0]["args"]["llm_configs"][0]
        assert llm["engine_kwargs"]["tensor_parallel_size"] == spec.resources.gpus
        assert llm["placement_group_config"]["strategy"] == "STRICT_PACK"
    else:
        assert group["groupName"] == "cpu"
        assert "nvidia.com/gpu" not in resources["limits"]


def test_gpu_product_tolerations_and_node_selector(matrix: dict[str, Obj]) -> None:
    md = ModelDeployment.model_validate(matrix["tensor-parallel-cached"])
    pod = _worker_pod(render(md))
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}
            ]
        }
    ]
    assert pod["nodeSelector"] == {"pool": "gpu", "topology.kubernetes.io/zone": "eu-west-1a"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {
            "key": "dedicated",
            "operator": "Equal",
            "value": "ai",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        },
    ]
    # Ray's accelerator_type is not derived from the GPU product name.
    assert "accelerator_type" not in _serve_config(render(md))["applications"][0]["args"]["llm_configs"][0]
    plain = _worker_pod(render(ModelDeployment.model_validate(matrix["pvc-model-s3-lora"])))
    assert "affinity" not in plain and "nodeSelector" not in plain and "tolerations" not in plain


def test_network_policies_admit_only_gateway_peers_and_kuberay(md: ModelDeployment) -> None:
    policies = {obj["metadata"]["name"]: obj["spec"] for obj in render(md) if obj["kind"] == "NetworkPolicy"}
    name = md.metadata.name
    assert set(policies) == {f"{name}-ray", f"{name}-ray-head"}
    pods = policies[f"{name}-ray"]
    ray_pods = {
        "matchLabels": {MODEL_LABEL: name},
        "matchExpressions": [
            {"key": "respublica.dev/component", "operator": "In", "values": ["ray-head", "ray-worker"]}
        ],
    }
    assert pods["podSelector"] == ray_pods
    assert pods["policyTypes"] == ["Ingress"]
    assert pods["ingress"] == [
        {
            "from": [
                {
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "respublica-gateway"}},
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "respublica-system"}
                    },
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8000}],
        },
        {"from": [{"podSelector": ray_pods}]},
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"protocol": "TCP", "port": 8080}],
        },
    ]
    head = policies[f"{name}-ray-head"]
    assert head["podSelector"] == {"matchLabels": {MODEL_LABEL: name, "respublica.dev/component": "ray-head"}}
    assert head["policyTypes"] == ["Ingress"]
    assert head["ingress"] == [
        {
            "from": [
                {
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8265}, {"protocol": "TCP", "port": 8000}],
        }
    ]


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and In/NotIn/Exists/DoesNotExist expressions)."""
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


def test_network_policies_select_the_ray_pods_and_never_the_download_job(matrix: dict[str, Obj]) -> None:
    """The download Job's pods carry the model label too; they must not get into Ray's ports."""
    objects = render(ModelDeployment.model_validate(matrix["tensor-parallel-cached"]))
    cluster = _cluster(objects)
    head = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    workers = [g["template"]["metadata"]["labels"] for g in cluster["workerGroupSpecs"]]
    job = _one(objects, "Job")["spec"]["template"]["metadata"]["labels"]
    assert job[MODEL_LABEL] == head[MODEL_LABEL]  # why the model label alone is not enough
    pods_policy, head_policy = [obj["spec"] for obj in objects if obj["kind"] == "NetworkPolicy"]
    peer = pods_policy["ingress"][1]["from"][0]["podSelector"]
    for selector in (pods_policy["podSelector"], peer):
        assert _selects(selector, head) and all(_selects(selector, w) for w in workers)
        assert not _selects(selector, job)
    assert _selects(head_policy["podSelector"], head)
    assert not any(_selects(head_policy["podSelector"], w) for w in [*workers, job])
    # Another model's Ray pods are not this model's peers.
    assert not _selects(peer, {**head, MODEL_LABEL: "other"})


def test_network_policy_options() -> None:
    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "m", "namespace": "ai"},
            "spec": {"model": {"source": "file:///m", "servedName": "m"}},
        }
    )
    options = RenderOptions(
        gateway_namespace=None,
        gateway_pod_labels={"app": "gw"},
        kuberay_namespace="ray-system",
        serve_port=9000,
        dashboard_port=9265,
    )
    policies = [obj for obj in render(md, options) if obj["kind"] == "NetworkPolicy"]
    gateway_rule = policies[0]["spec"]["ingress"][0]
    assert gateway_rule == {
        "from": [{"podSelector": {"matchLabels": {"app": "gw"}}}],
        "ports": [{"protocol": "TCP", "port": 9000}],
    }
    kuberay_rule = policies[1]["spec"]["ingress"][0]
    assert kuberay_rule["from"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "ray-system"}
    }
    assert kuberay_rule["ports"] == [{"protocol": "TCP", "port": 9265}, {"protocol": "TCP", "port": 9000}]
    assert _serve_config(render(md, options))["http_options"]["port"] == 9000
    assert endpoint_url(md, options) == "http://m-serve-svc.ai.svc:9000"


def test_cache_claim_and_download_job(matrix: dict[str, Obj]) -> None:
    md = ModelDeployment.model_validate(matrix["tensor-parallel-cached"])
    objects = render(md)
    kinds = [obj["kind"] for obj in objects]
    assert kinds == [
        "PersistentVolumeClaim",
        "Job",
        "NetworkPolicy",
        "NetworkPolicy",
        "ConfigMap",
        "RayService",
    ]
    claim = _one(objects, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "llama-70b-model-cache"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "200Gi"}},
        "storageClassName": "cephfs",
    }
    job = _one(objects, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    target = f"/models/hf/meta-llama/Llama-3.3-70B-Instruct/{md.spec.model.revision}"
    assert container["args"][:3] == ["meta-llama/Llama-3.3-70B-Instruct", md.spec.model.revision, target]
    assert (
        job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        == claim["metadata"]["name"]
    )
    # The replicas read the cache, read-only and offline, once the Job has marked it complete.
    pod = _worker_pod(objects)
    llm = _serve_config(objects)["applications"][0]["args"]["llm_configs"][0]
    assert llm["model_loading_config"]["model_source"] == target
    assert "revision" not in llm["engine_kwargs"]
    (worker,) = pod["containers"]
    assert {"name": "model-cache", "mountPath": "/models", "readOnly": True} in worker["volumeMounts"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in worker["env"]
    (wait,) = pod["initContainers"]
    assert wait["args"][0] == f"{target}/.respublica-complete"
    # A new revision is a new Job (a Job's template is immutable); the claim stays.
    matrix["tensor-parallel-cached"]["spec"]["model"]["revision"] = "f" * 40
    moved = render(ModelDeployment.model_validate(matrix["tensor-parallel-cached"]))
    assert _one(moved, "Job")["metadata"]["name"] != job["metadata"]["name"]
    assert _one(moved, "PersistentVolumeClaim")["metadata"]["name"] == claim["metadata"]["name"]


def test_no_cache_no_cache_objects(matrix: dict[str, Obj]) -> None:
    objects = render(ModelDeployment.model_validate(matrix["one-gpu"]))
    assert [obj["kind"] for obj in objects] == ["NetworkPolicy", "NetworkPolicy", "ConfigMap", "RayService"]
    (worker,) = _worker_pod(objects)["containers"]
    # Without a cache each replica fetches the pinned revision from the hub.
    assert "HF_HUB_OFFLINE" not in {e["name"] for e in worker["env"]}
    llm = _serve_config(objects)["applications"][0]["args"]["llm_configs"][0]
    assert llm["model_loading_config"]["model_source"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert llm["engine_kwargs"]["revision"] == matrix["one-gpu"]["spec"]["model"]["revision"]


def test_pvc_sources_are_mounted_read_only(matrix: dict[str, Obj]) -> None:
    objects = render(ModelDeployment.model_validate(matrix["pvc-model-s3-lora"]))
    pod = _worker_pod(objects)
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    # Only the model's claim: LoRA adapters come from object storage, not from a volume.
    assert set(claims) == {"weights.store"}
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in claims.values())
    (worker,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert mounts["/mnt/pvc/weights.store"]["readOnly"] is True
    assert set(mounts) == {"/mnt/pvc/weights.store", "/dev/shm", "/home/ray/ray_bootstrap_config.yaml"}
    llm = _serve_config(objects)["applications"][0]["args"]["llm_configs"][0]
    assert llm["model_loading_config"]["model_source"] == "/mnt/pvc/weights.store/mistral/7b"


def _ray_containers(objects: list[Obj]) -> dict[str, Obj]:
    cluster = _cluster(objects)
    pods = [cluster["headGroupSpec"]["template"]["spec"], _worker_pod(objects)]
    return {c["name"]: c for pod in pods for c in pod["containers"]}


def test_lora_adapters_from_object_storage(matrix: dict[str, Obj]) -> None:
    objects = render(ModelDeployment.model_validate(matrix["pvc-model-s3-lora"]))
    llm = _serve_config(objects)["applications"][0]["args"]["llm_configs"][0]
    assert llm["lora_config"] == {
        "dynamic_lora_loading_path": "s3://adapters/mistral",
        "max_num_adapters_per_replica": 4,
    }
    containers = _ray_containers(objects)
    # The head's ingress lists the adapters, the workers' replicas download them: both reach the store.
    assert set(containers) == {"ray-head", "ray-worker"}
    for container in containers.values():
        env = {e["name"]: e for e in container["env"]}
        assert env["AWS_ENDPOINT_URL_S3"] == {
            "name": "AWS_ENDPOINT_URL_S3",
            "value": "http://minio.storage.svc:9000",
        }
        assert container["envFrom"] == [{"secretRef": {"name": "adapters-s3"}}]
    # KubeRay's autoscaler sidecar never touches the adapters: it gets neither.
    autoscaler = _cluster(objects)["autoscalerOptions"]
    assert "envFrom" not in autoscaler
    assert not any(e["name"].startswith("AWS_") for e in autoscaler["env"])


def test_lora_without_endpoint_or_secret_adds_no_env(matrix: dict[str, Obj]) -> None:
    objects = render(ModelDeployment.model_validate(matrix["pvc-root-gcs-lora"]))
    llm = _serve_config(objects)["applications"][0]["args"]["llm_configs"][0]
    assert llm["lora_config"]["dynamic_lora_loading_path"] == "gs://agency-adapters/gemma"
    for container in _ray_containers(objects).values():
        assert "envFrom" not in container
        assert not any(e["name"].startswith("AWS_") for e in container["env"])
    for name in ("one-gpu", "cpu-no-namespace"):
        for container in _ray_containers(render(ModelDeployment.model_validate(matrix[name]))).values():
            assert "envFrom" not in container
            assert not any(e["name"].startswith("AWS_") for e in container["env"])


def test_images_and_registry_override(matrix: dict[str, Obj]) -> None:
    md = ModelDeployment.model_validate(matrix["tensor-parallel-cached"])
    options = RenderOptions(image_registry="registry.agency.example/mirror", image_pull_secrets=("pull",))
    objects = render(md, options)
    images = {c["image"] for obj in objects for c in _containers(obj) if "image" in c}
    assert images == {"registry.agency.example/mirror/rayproject/ray-llm:2.60.0-py311-cu128"}
    for obj in objects:
        for pod in _pod_specs(obj):
            assert pod["imagePullSecrets"] == [{"name": "pull"}]
    matrix["tensor-parallel-cached"]["spec"]["image"] = "ghcr.io/agency/vllm-ray:1"
    own = render(ModelDeployment.model_validate(matrix["tensor-parallel-cached"]), options)
    ray_images = {c["image"] for c in _containers(_one(own, "RayService")) if "image" in c}
    assert ray_images == {"ghcr.io/agency/vllm-ray:1"}


def test_names_and_endpoint(matrix: dict[str, Obj]) -> None:
    md = ModelDeployment.model_validate(matrix["one-gpu"])
    assert rayservice_name(md) == "llama-3-8b"
    assert serve_service_name(md) == "llama-3-8b-serve-svc"
    assert endpoint_url(md) == "http://llama-3-8b-serve-svc.ai.svc:8000"
    assert _one(render(md), "RayService")["metadata"]["name"] == rayservice_name(md)
    assert _cluster(render(md))["workerGroupSpecs"][0]["groupName"] == worker_group_name(md) == "gpu"
    policies = tuple(obj["metadata"]["name"] for obj in render(md) if obj["kind"] == "NetworkPolicy")
    assert policies == network_policy_names(md)
    cached = ModelDeployment.model_validate(matrix["tensor-parallel-cached"])
    objects = render(cached)
    assert _one(objects, "Job")["metadata"]["name"] == download_job_name(cached)
    assert _one(objects, "PersistentVolumeClaim")["metadata"]["name"] == cache_claim_name(cached)
    assert endpoint_url(ModelDeployment.model_validate(matrix["cpu-no-namespace"])) == (
        "http://tiny-serve-svc.default.svc:8000"
    )


def test_spec_hash_follows_the_spec(matrix: dict[str, Obj]) -> None:
    md = ModelDeployment.model_validate(matrix["one-gpu"])
    same = ModelDeployment.model_validate(matrix["one-gpu"] | {"metadata": {"name": "other", "uid": "x"}})
    assert spec_hash(md) == spec_hash(same)  # metadata is not the spec
    matrix["one-gpu"]["spec"]["scaling"] = {"maxReplicas": 2}
    assert spec_hash(ModelDeployment.model_validate(matrix["one-gpu"])) != spec_hash(md)


def test_worker_pods_fit_exactly_one_replica(md: ModelDeployment) -> None:
    """Ray's own placement bundles of one replica fit in a worker pod's Ray resources, twice never."""
    serve_llm = pytest.importorskip("ray.serve.llm", reason="Ray Serve LLM is not installed")
    objects = render(md)
    (group,) = _cluster(objects)["workerGroupSpecs"]
    offered = {
        "CPU": float(group["rayStartParams"]["num-cpus"]),
        "GPU": float(group["rayStartParams"]["num-gpus"]),
    }
    llm = serve_llm.LLMConfig.model_validate(
        _serve_config(objects)["applications"][0]["args"]["llm_configs"][0]
    )
    bundles = [dict(b) for b in llm.get_engine_config().placement_bundles]
    bundles[0]["CPU"] = (
        bundles[0].get("CPU", 0) + 1
    )  # the LLMServer actor joins the first bundle (Ray's merge)
    needed = {kind: sum(b.get(kind, 0) for b in bundles) for kind in ("CPU", "GPU")}
    assert needed["CPU"] + 1 <= offered["CPU"], "no room for Ray's helper actors beside the replica"
    assert needed["GPU"] == offered["GPU"]
    assert any(2 * needed[kind] > offered[kind] for kind in ("CPU", "GPU")), "two replicas fit in one pod"
    # The head offers Ray CPUs for the ingress only: no replica fits there.
    head = _cluster(objects)["headGroupSpec"]["rayStartParams"]
    head_offers = {"CPU": float(head["num-cpus"]), "GPU": float(head.get("num-gpus", 0))}
    assert any(head_offers[kind] < needed[kind] for kind in ("CPU", "GPU")), head_offers
