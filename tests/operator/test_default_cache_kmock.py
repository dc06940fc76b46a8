"""The default weight cache through the real operator on kmock (render/default_cache.py).

A model created at minReplicas 0 gets the cache volume and its download Job; a change of
minReplicas afterwards never moves the Ray pod template, so KubeRay (kuberay
`ray-operator/controllers/ray/utils/util.go` `GenerateHashWithoutReplicasAndWorkersToDelete`,
`rayservice_controller.go` `shouldUpdateCluster`, modelled in `kuberay_model`) never builds a
second cluster for it.
"""

from __future__ import annotations

from typing import Any

import kmock
import pytest

from helpers import kmock_api as kapi
from respublica.operator.kuberay_model import cluster_hash
from respublica.operator.render.default_cache import DEFAULT_CACHE_ANNOTATION

pytestmark = pytest.mark.timeout(120)
CLAIMS = "v1/persistentvolumeclaims"
JOBS = "batch/v1/jobs"


def _cluster(k8s: kmock.KubernetesEmulator) -> dict[str, Any]:
    cluster: dict[str, Any] = kapi.objects_of(k8s, kapi.RAYSERVICES)["llama"]["spec"]["rayClusterConfig"]
    return cluster


async def _set_min_replicas(k8s: kmock.KubernetesEmulator, generation: int, min_replicas: int) -> None:
    spec = kapi.md_body(generation=generation, scaling={"minReplicas": min_replicas, "maxReplicas": 2})[
        "spec"
    ]
    await kapi.api(
        k8s, "PATCH", kapi.path(kapi.MD, "llama"), {"metadata": {"generation": generation}, "spec": spec}
    )
    await kapi.eventually(
        lambda: kapi.md_status(k8s).get("observedGeneration") == generation, what=f"generation {generation}"
    )
    await kapi.quiet(k8s)


async def test_a_new_model_at_zero_gets_its_cache_and_keeps_it(k8s: kmock.KubernetesEmulator) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(
            k8s, "POST", kapi.path(kapi.MD), kapi.md_body(scaling={"minReplicas": 0, "maxReplicas": 2})
        )
        claim = await kapi.eventually(
            lambda: kapi.objects_of(k8s, CLAIMS).get("llama-model-cache"), what="the cache claim"
        )
        assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        (job,) = await kapi.eventually(lambda: list(kapi.objects_of(k8s, JOBS).values()), what="the Job")
        assert job["metadata"]["name"].startswith("llama-download-")
        rs = await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="the RayService"
        )
        assert rs["metadata"]["annotations"][DEFAULT_CACHE_ANNOTATION] == "true"
        (group,) = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        mounted = {
            v["persistentVolumeClaim"]["claimName"]
            for v in group["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert "llama-model-cache" in mounted
        status = await kapi.eventually(
            lambda: (s := kapi.md_status(k8s)).get("phase") == "Deploying" and s, what="Deploying"
        )
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "DownloadingModel"

        # Raised to serve all the time: the cache stays, the Ray pod template does not move.
        created = cluster_hash(_cluster(k8s))
        await _set_min_replicas(k8s, 2, 1)
        assert cluster_hash(_cluster(k8s)) == created
        assert "llama-model-cache" in kapi.objects_of(k8s, CLAIMS)
        assert (
            kapi.objects_of(k8s, kapi.RAYSERVICES)["llama"]["metadata"]["annotations"][
                DEFAULT_CACHE_ANNOTATION
            ]
            == "true"
        )


async def test_a_running_model_lowered_to_zero_keeps_its_cluster(k8s: kmock.KubernetesEmulator) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body())
        await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="the RayService"
        )
        await kapi.quiet(k8s)
        running = cluster_hash(_cluster(k8s))

        await _set_min_replicas(k8s, 2, 0)
        assert cluster_hash(_cluster(k8s)) == running  # KubeRay: no second cluster
        assert kapi.objects_of(k8s, CLAIMS) == {} and kapi.objects_of(k8s, JOBS) == {}
        assert (
            kapi.objects_of(k8s, kapi.RAYSERVICES)["llama"]["metadata"]["annotations"][
                DEFAULT_CACHE_ANNOTATION
            ]
            == "false"
        )
