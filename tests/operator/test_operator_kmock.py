"""The real kopf operator (kopf's test runner) against kmock: children, status, drift, errors."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import pytest
import yaml

from helpers import kmock_api as kapi
from respublica.operator.render import MODEL_LABEL, SPEC_HASH_ANNOTATION
from respublica.operator.render.configure import render_options
from respublica.operator.render.default_cache import UNCACHED_AT_ZERO

pytestmark = pytest.mark.timeout(120)


async def test_apply_creates_children_with_owner_refs_and_hash(k8s: kmock.KubernetesEmulator) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body(cache={"size": "100Gi"}))
        children = await kapi.eventually(
            lambda: (
                {kind: kapi.objects_of(k8s, res) for res, kind in kapi.CHILD_RESOURCES.items()}
                if all(kapi.objects_of(k8s, res) for res in kapi.CHILD_RESOURCES)
                else None
            ),
            what="all four kinds of children",
        )
        for kind, objs in children.items():
            for name, obj in objs.items():
                refs = obj["metadata"]["ownerReferences"]
                assert refs == [
                    {
                        "apiVersion": "respublica.dev/v1alpha1",
                        "kind": "ModelDeployment",
                        "name": "llama",
                        "uid": "uid-llama",
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ], (kind, name)
                assert obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION], (kind, name)
        status = await kapi.eventually(lambda: kapi.md_status(k8s).get("phase"), what="a phase")
        assert status in ("Pending", "Deploying")

        # kopf keeps no bookkeeping (the operator uses no change handlers, only event handlers),
        # returns no results into status, and adds no finalizer.
        await kapi.quiet(k8s)
        md = kapi.objects_of(k8s, kapi.MD)["llama"]
        assert set(md["status"]) <= {
            "phase",
            "conditions",
            "observedGeneration",
            "replicas",
            "endpoint",
            "wakeTimeoutSeconds",
        }
        annotations = md["metadata"].get("annotations") or {}
        assert "respublica.dev/last-handled-configuration" not in annotations
        assert not any(k.startswith("kopf.zalando.org") for k in annotations)
        assert not md["metadata"].get("finalizers")


def _rayservice_status(
    app: str = "RUNNING", ready: int = 1, desired: int = 1, cluster: str = "llama-abcde"
) -> dict[str, Any]:
    return {
        "status": {
            "serviceStatus": "Running" if app == "RUNNING" else "",
            "numServeEndpoints": 1,
            "conditions": [
                {"type": "Ready", "status": "True" if app == "RUNNING" else "False", "reason": "R"},
                {"type": "UpgradeInProgress", "status": "False", "reason": "NoPendingCluster"},
            ],
            "activeServiceStatus": {
                "rayClusterName": cluster,
                "applicationStatuses": {
                    "llm": {"status": app, "serveDeploymentStatuses": {"LLMServer": {"status": "HEALTHY"}}}
                },
                "rayClusterStatus": {"desiredWorkerReplicas": desired, "readyWorkerReplicas": ready},
            },
        }
    }


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


async def test_spec_change_updates_children_and_nothing_changed_writes_nothing(
    k8s: kmock.KubernetesEmulator,
) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body())
        await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="the RayService"
        )
        await kapi.eventually(lambda: kapi.md_status(k8s).get("observedGeneration") == 1, what="generation 1")
        await kapi.quiet(k8s)
        first = kapi.child_writes(k8s)
        assert sorted(first) == sorted(
            ["POST rayservices/", "POST networkpolicies/", "POST networkpolicies/", "POST configmaps/"]
        ), first

        # Nothing changed: events, resyncs and handler runs read, but write nothing to a child.
        await kapi.api(k8s, "PATCH", kapi.path(kapi.MD, "llama"), {"metadata": {"labels": {"team": "nlp"}}})
        await asyncio.sleep(4)  # longer than the resync interval (3 s)
        await kapi.quiet(k8s)
        assert kapi.child_writes(k8s) == first

        old_hash = kapi.objects_of(k8s, kapi.RAYSERVICES)["llama"]["metadata"]["annotations"][
            SPEC_HASH_ANNOTATION
        ]
        await kapi.api(
            k8s,
            "PATCH",
            kapi.path(kapi.MD, "llama"),
            {"metadata": {"generation": 2}, "spec": {"scaling": {"minReplicas": 1, "maxReplicas": 4}}},
        )
        rs = await kapi.eventually(
            lambda: (
                (obj := kapi.objects_of(k8s, kapi.RAYSERVICES)["llama"])["metadata"]["annotations"][
                    SPEC_HASH_ANNOTATION
                ]
                != old_hash
                and obj
            ),
            what="the RayService to follow the spec",
        )
        (llm_config,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["llm_configs"]
        assert llm_config["deployment_config"]["autoscaling_config"]["max_replicas"] == 4
        await kapi.eventually(lambda: kapi.md_status(k8s).get("observedGeneration") == 2, what="generation 2")
        await kapi.quiet(k8s)
        patched = [w for w in kapi.child_writes(k8s) if w not in first]
        assert patched and all(w.startswith("PATCH ") for w in patched), patched


async def test_rayservice_status_flows_into_phase_conditions_replicas(k8s: kmock.KubernetesEmulator) -> None:
    # No default cache (`--default-cache-size none`): the status follows the RayService alone, and a
    # model at zero without a cache is told what each wake costs.
    no_default_cache = render_options({"RESPUBLICA_DEFAULT_CACHE_SIZE": "none"})
    async with kapi.running_operator(k8s, render=no_default_cache):
        await kapi.api(
            k8s, "POST", kapi.path(kapi.MD), kapi.md_body(scaling={"minReplicas": 0, "maxReplicas": 2})
        )
        await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="the RayService"
        )
        rs_status = kapi.path(kapi.RAYSERVICES, "llama", "status")

        await kapi.api(k8s, "PATCH", rs_status, _rayservice_status(app="DEPLOYING", ready=0, desired=1))
        status = await kapi.eventually(
            lambda: (s := kapi.md_status(k8s)).get("phase") == "Deploying" and s, what="Deploying"
        )
        assert _condition(status, "Progressing")["status"] == "True"
        assert "endpoint" not in status

        await kapi.api(k8s, "PATCH", rs_status, _rayservice_status(ready=2, desired=2))
        status = await kapi.eventually(
            lambda: (s := kapi.md_status(k8s)).get("phase") == "Ready" and s, what="Ready"
        )
        assert status["replicas"] == {"desired": 2, "ready": 2}
        assert _condition(status, "Ready")["status"] == "True"
        assert status["endpoint"] == "http://llama-serve-svc.ai.svc:8000"
        ready_since = _condition(status, "Ready")["lastTransitionTime"]

        await kapi.api(k8s, "PATCH", rs_status, _rayservice_status(ready=0, desired=0))
        status = await kapi.eventually(
            lambda: (s := kapi.md_status(k8s)).get("phase") == "ScaledToZero" and s, what="ScaledToZero"
        )
        assert status["replicas"] == {"desired": 0, "ready": 0}
        assert status["endpoint"] == "http://llama-serve-svc.ai.svc:8000"
        ready = _condition(status, "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero")
        assert ready["message"].endswith(UNCACHED_AT_ZERO)
        assert ready["lastTransitionTime"] == ready_since  # still Ready: the clock did not restart

        await kapi.api(k8s, "PATCH", rs_status, _rayservice_status(app="DEPLOY_FAILED", ready=0, desired=1))
        status = await kapi.eventually(
            lambda: (s := kapi.md_status(k8s)).get("phase") == "Failed" and s, what="Failed"
        )
        assert _condition(status, "Degraded")["reason"] == "ServeDeployFailed"

        # The Event follows the status write.
        await kapi.eventually(
            lambda: (
                {"Deploying", "Ready", "ScaledToZero", "Failed"}
                <= {e["reason"] for e in kapi.objects_of(k8s, "v1/events").values()}
            ),
            what="an Event for every phase transition",
        )
        warnings = {e["reason"] for e in kapi.objects_of(k8s, "v1/events").values() if e["type"] == "Warning"}
        assert warnings == {"Failed"}


async def test_hand_edit_and_deletion_are_put_back(k8s: kmock.KubernetesEmulator) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body())
        rs = await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="the RayService"
        )
        policies = await kapi.eventually(lambda: kapi.objects_of(k8s, "networking.k8s.io/v1/networkpolicies"))
        await kapi.quiet(k8s)

        # A hand edit of an owned field (the hash annotation stays the same: only drift sees it).
        await kapi.api(
            k8s,
            "PATCH",
            kapi.path(kapi.RAYSERVICES, "llama"),
            {"spec": {"serveConfigV2": "applications: []"}},
        )
        await kapi.eventually(
            lambda: (
                kapi.objects_of(k8s, kapi.RAYSERVICES)["llama"]["spec"]["serveConfigV2"]
                == rs["spec"]["serveConfigV2"]
            ),
            what="the serve config to be put back",
        )

        name = sorted(policies)[0]
        await kapi.api(k8s, "DELETE", kapi.path("networking.k8s.io/v1/networkpolicies", name))
        back = await kapi.eventually(
            lambda: kapi.objects_of(k8s, "networking.k8s.io/v1/networkpolicies").get(name),
            what="the policy back",
        )
        assert back["spec"] == policies[name]["spec"]

    # Least privilege holds in practice: everything asked of the API is granted by the RBAC.
    used = kapi.used_grants(k8s)
    assert used <= kapi.NEEDED, used - kapi.NEEDED
    assert ("ray.io", "rayservices", "create") in used


async def test_api_errors_back_off_then_converge(k8s: kmock.KubernetesEmulator) -> None:
    """500, 429 and 409 on every call for a child or the status, for a while; then healthy."""
    failing = {"on": True, "served": 0}
    codes = [500, 429, 409]
    targets = {kmock.resource(r) for r in kapi.CHILD_RESOURCES} | {kmock.resource(kapi.MD)}

    def hit(request: kmock.Request) -> bool:
        # Reads and writes of children (the operator's LISTs by the model label included) and
        # writes of the status fail; kopf's lists and watches go on (a watcher that cannot list
        # gives up, which is kopf's business, not ours).
        if not failing["on"] or request.action == kmock.action.WATCH:
            return False
        if request.action == kmock.action.LIST:
            return MODEL_LABEL in str(request.params.get("labelSelector", ""))
        if request.resource == kmock.resource(kapi.MD):
            return request.subresource == "status" and request.method == kmock.method.PATCH
        return request.resource in targets

    def fail() -> None:
        failing["served"] += 1
        code = codes[failing["served"] % len(codes)]
        raise kmock.KubernetesError(status=code, reason="Injected", message=f"injected {code}")

    # A criterion function is asked on every request (a payload that declines is used up).
    k8s[hit] << fail
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body())
        await kapi.eventually(lambda: failing["served"] >= 6, what="several failed attempts")
        await asyncio.sleep(2)
        # Backing off, not spinning: a retry every 0.5 s or slower (a few requests per attempt).
        assert failing["served"] < 80, failing
        assert "phase" not in kapi.md_status(k8s)

        failing["on"] = False
        status = await kapi.eventually(
            lambda: (s := kapi.md_status(k8s)).get("observedGeneration") == 1 and s, what="convergence"
        )
        assert status["phase"] == "Pending"
        assert set(kapi.objects_of(k8s, kapi.RAYSERVICES)) == {"llama"}
        assert len(kapi.objects_of(k8s, "networking.k8s.io/v1/networkpolicies")) == 2


async def test_invalid_spec_is_failed_once_not_retried(k8s: kmock.KubernetesEmulator) -> None:
    body = kapi.md_body()
    del body["spec"]["model"]["revision"]  # hf:// without a pinned revision: the CRD's CEL would refuse it
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), body)
        status = await kapi.eventually(
            lambda: (s := kapi.md_status(k8s)).get("phase") == "Failed" and s, what="Failed"
        )
        ready = _condition(status, "Ready")
        assert ready["reason"] == "InvalidSpec"
        assert "spec.model.revision is required" in ready["message"]
        assert kapi.child_writes(k8s) == []

        await kapi.quiet(k8s)
        before = len(k8s._requests)
        await asyncio.sleep(4)  # beyond a resync: reads at most, no new writes, no retry loop
        writes = [
            r
            for r in list(k8s._requests)[before:]
            if r.method in kapi.WRITE_METHODS and r.resource != kmock.resource("v1/events")
        ]
        assert writes == []

        # Fixing the spec is what brings it back.
        await kapi.api(
            k8s,
            "PATCH",
            kapi.path(kapi.MD, "llama"),
            {"metadata": {"generation": 2}, "spec": {"model": {"revision": "0e9e39f"}}},
        )
        await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="the RayService"
        )
        await kapi.eventually(lambda: kapi.md_status(k8s).get("phase") == "Pending", what="Pending")


async def test_cpu_model_on_the_cuda_default_image_is_failed_with_the_fix(
    k8s: kmock.KubernetesEmulator,
) -> None:
    body = kapi.md_body(resources={"gpus": 0, "cpu": "2", "memory": "8Gi"})
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), body)
        status = await kapi.eventually(
            lambda: (s := kapi.md_status(k8s)).get("phase") == "Failed" and s, what="Failed"
        )
        ready = _condition(status, "Ready")
        assert ready["reason"] == "InvalidSpec"
        assert "spec.resources.gpus is 0" in ready["message"] and "set spec.image" in ready["message"]
        assert kapi.child_writes(k8s) == []

        await kapi.api(
            k8s,
            "PATCH",
            kapi.path(kapi.MD, "llama"),
            {"metadata": {"generation": 2}, "spec": {"image": "registry.example.org/vllm-cpu:1"}},
        )
        await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="the RayService"
        )


async def test_missing_kuberay_is_a_condition_then_picked_up(kmock: kmock.KubernetesEmulator) -> None:
    kapi.declare(kmock, kuberay=False)
    async with kapi.running_operator(kmock) as runner:
        await kapi.api(kmock, "POST", kapi.path(kapi.MD), kapi.md_body())
        status = await kapi.eventually(
            lambda: (s := kapi.md_status(kmock)).get("phase") == "Pending" and s, what="a Pending status"
        )
        ready = _condition(status, "Ready")
        assert ready["reason"] == "KubeRayNotInstalled"
        assert ready["message"].startswith("KubeRay is not installed: RayService CRD not found")
        assert kapi.objects_of(kmock, "networking.k8s.io/v1/networkpolicies")  # the rest is in place
        assert runner._thread.is_alive() is not False  # still running, not crashed

        # KubeRay arrives: the next resync creates the RayService.
        kmock.resources[kapi.RAYSERVICES] = kmock.ResourceInfo(
            kind="RayService", namespaced=True, verbs=kapi.VERBS, subresources={"status"}
        )
        await kapi.eventually(
            lambda: kapi.objects_of(kmock, kapi.RAYSERVICES).get("llama"), what="the RayService"
        )
        await kapi.eventually(
            lambda: _condition(kapi.md_status(kmock), "Ready")["reason"] != "KubeRayNotInstalled",
            what="recovery",
        )


async def test_pod_problems_reach_the_conditions(k8s: kmock.KubernetesEmulator) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body())
        await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="the RayService"
        )
        unschedulable = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "llama-abcde-gpu-worker-x1",
                "namespace": kapi.NS,
                "labels": {"ray.io/cluster": "llama-abcde", "ray.io/node-type": "worker"},
            },
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/4 nodes are available: 4 node(s) didn't match node affinity.",
                    }
                ],
            },
        }
        await kapi.api(k8s, "POST", kapi.path("v1/pods"), unschedulable)
        await kapi.api(
            k8s,
            "PATCH",
            kapi.path(kapi.RAYSERVICES, "llama", "status"),
            _rayservice_status(app="DEPLOYING", ready=0),
        )
        status = await kapi.eventually(
            lambda: (s := kapi.md_status(k8s)).get("phase") == "Degraded" and s, what="Degraded"
        )
        reason, message = _condition(status, "Degraded")["reason"], _condition(status, "Degraded")["message"]
        assert reason == "Unschedulable"
        assert "no node has nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3" in message


async def test_children_the_spec_no_longer_needs_are_removed(k8s: kmock.KubernetesEmulator) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body(cache={"size": "100Gi"}))
        first_job = await kapi.eventually(
            lambda: set(kapi.objects_of(k8s, "batch/v1/jobs")), what="the download Job"
        )
        # Someone else's Job in the same namespace, carrying our label but not owned by this model.
        await kapi.api(
            k8s,
            "POST",
            kapi.path("batch/v1/jobs"),
            {
                "metadata": {
                    "name": "other",
                    "namespace": kapi.NS,
                    "labels": {"respublica.dev/model-deployment": "llama"},
                }
            },
        )

        # A new revision: a new download Job; the old one goes.
        await kapi.api(
            k8s,
            "PATCH",
            kapi.path(kapi.MD, "llama"),
            {"metadata": {"generation": 2}, "spec": {"model": {"revision": "1f2e3d4"}}},
        )
        jobs = await kapi.eventually(
            lambda: (
                (j := set(kapi.objects_of(k8s, "batch/v1/jobs"))) != first_job | {"other"}
                and len(j) == 2
                and j
            ),
            what="the new Job replacing the old",
        )
        assert "other" in jobs and not (jobs & first_job)

        # No cache any more: claim and Job go; the RayService stays.
        await kapi.api(
            k8s,
            "PATCH",
            kapi.path(kapi.MD, "llama"),
            {"metadata": {"generation": 3}, "spec": {"cache": None}},
        )
        await kapi.eventually(
            lambda: (
                not kapi.objects_of(k8s, "v1/persistentvolumeclaims")
                and set(kapi.objects_of(k8s, "batch/v1/jobs")) == {"other"}
            ),
            what="the cache to be removed",
        )
        assert set(kapi.objects_of(k8s, kapi.RAYSERVICES)) == {"llama"}


async def test_scope_is_the_listed_namespaces(k8s: kmock.KubernetesEmulator) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(
            k8s, "POST", kapi.path(kapi.MD, ns="elsewhere"), kapi.md_body(uid="uid-other", ns="elsewhere")
        )
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body())
        await kapi.eventually(lambda: kapi.md_status(k8s).get("phase"), what="the listed namespace's status")
        await kapi.quiet(k8s)
        assert not kapi.objects_of(k8s, kapi.RAYSERVICES, ns="elsewhere")
        assert "status" not in kapi.objects_of(k8s, kapi.MD, ns="elsewhere")["llama"]


async def test_all_namespaces(k8s: kmock.KubernetesEmulator) -> None:
    async with kapi.running_operator(k8s, namespaces=()):
        await kapi.api(
            k8s, "POST", kapi.path(kapi.MD, ns="elsewhere"), kapi.md_body(uid="uid-other", ns="elsewhere")
        )
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body())
        await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES, ns="elsewhere"), what="the other namespace"
        )
        await kapi.eventually(lambda: kapi.objects_of(k8s, kapi.RAYSERVICES), what="the test namespace")
