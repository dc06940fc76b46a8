"""Scaling that applies, through the real operator on kmock: a changed `scaling.maxReplicas` reaches
the running RayCluster, which KubeRay itself would leave alone (see test_raycluster_bounds)."""

from __future__ import annotations

import copy
from typing import Any

import kmock
import pytest

from helpers import kmock_api as kapi

pytestmark = pytest.mark.timeout(120)
RAYCLUSTERS = "ray.io/v1/rayclusters"


async def test_new_bounds_and_tolerations_reach_the_active_raycluster(k8s: kmock.KubernetesEmulator) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body())
        rs = await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="RayService"
        )
        # KubeRay's part: a RayCluster from the RayService's config, named in the RayService status.
        cluster = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": "llama-abcde", "namespace": kapi.NS},
            "spec": copy.deepcopy(rs["spec"]["rayClusterConfig"]),
        }
        await kapi.api(k8s, "POST", kapi.path(RAYCLUSTERS), cluster)
        status = {"status": {"activeServiceStatus": {"rayClusterName": "llama-abcde"}}}
        await kapi.api(k8s, "PATCH", kapi.path(kapi.RAYSERVICES, "llama", "status"), status)

        toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        spec = kapi.md_body(
            generation=2,
            scaling={"minReplicas": 0, "maxReplicas": 4},
            resources={"gpus": 1, "gpuProduct": "NVIDIA-H100-80GB-HBM3", "tolerations": [toleration]},
        )
        await kapi.api(
            k8s, "PATCH", kapi.path(kapi.MD, "llama"), {"metadata": {"generation": 2}, "spec": spec["spec"]}
        )

        def group() -> dict[str, Any] | None:
            (g,) = kapi.objects_of(k8s, RAYCLUSTERS)["llama-abcde"]["spec"]["workerGroupSpecs"]
            return g if g["maxReplicas"] == 4 else None

        found = await kapi.eventually(group, what="the RayCluster's new bounds")
        assert found["minReplicas"] == 0 and found["replicas"] == 1
        assert found["template"]["spec"]["tolerations"] == [toleration]
    used = kapi.used_grants(k8s)
    assert used <= kapi.NEEDED, used - kapi.NEEDED
    assert ("ray.io", "rayclusters", "patch") in used
