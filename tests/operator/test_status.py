"""Status from children (pure): every phase and condition from every state the children report."""

from __future__ import annotations

from typing import Any

import pytest

from respublica.api.models import ModelDeploymentStatus
from respublica.operator.status import Observation, compute_status, pod_problems, status_changed, status_dict

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T01:00:00Z"
ENDPOINT = "http://llama-serve-svc.ai.svc:8000"


def rayservice(
    app: str | None = "RUNNING",
    ready: int = 1,
    desired: int = 1,
    ready_condition: bool | None = None,
    upgrading: bool = False,
    deployment: tuple[str, str] | None = None,
    app_message: str = "",
    replica_failure: str | None = None,
) -> dict[str, Any]:
    if app is None:
        return {"metadata": {"name": "llama"}, "spec": {}}
    is_ready = app == "RUNNING" if ready_condition is None else ready_condition
    deployments = {"LLMServer": {"status": "HEALTHY"}}
    if deployment:
        deployments = {"LLMServer": {"status": deployment[0], "message": deployment[1]}}
    cluster: dict[str, Any] = {"desiredWorkerReplicas": desired, "readyWorkerReplicas": ready}
    if replica_failure:
        cluster["conditions"] = [
            {
                "type": "RayClusterReplicaFailure",
                "status": "True",
                "reason": "FailedCreateWorkerPod",
                "message": replica_failure,
            }
        ]
    return {
        "metadata": {"name": "llama"},
        "status": {
            "serviceStatus": "Running" if is_ready else "",
            "conditions": [
                {"type": "Ready", "status": str(is_ready), "reason": "x"},
                {"type": "UpgradeInProgress", "status": str(upgrading), "reason": "x"},
            ],
            "activeServiceStatus": {
                "rayClusterName": "llama-x1",
                "applicationStatuses": {
                    "llm": {"status": app, "message": app_message, "serveDeploymentStatuses": deployments}
                },
                "rayClusterStatus": cluster,
            },
        },
    }


def job(state: str = "running", message: str | None = None) -> dict[str, Any]:
    conditions = []
    if state == "complete":
        conditions = [{"type": "Complete", "status": "True"}]
    elif state == "failed":
        conditions = [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": message or ""}
        ]
    return {
        "metadata": {"name": "llama-download-1"},
        "status": {"conditions": conditions, "succeeded": 1 if state == "complete" else 0},
    }


def pod(
    name: str = "llama-x1-gpu-worker-abc",
    job_name: str | None = None,
    unschedulable: str | None = None,
    waiting: str | None = None,
    waiting_message: str = "",
    last_terminated: dict[str, Any] | None = None,
    terminated: dict[str, Any] | None = None,
) -> dict[str, Any]:
    labels = (
        {"job-name": job_name} if job_name else {"ray.io/cluster": "llama-x1", "ray.io/node-type": "worker"}
    )
    status: dict[str, Any] = {"conditions": []}
    if unschedulable:
        status["conditions"].append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    container: dict[str, Any] = {"name": "main", "image": "ray-llm:2.60", "state": {}}
    if waiting:
        container["state"] = {"waiting": {"reason": waiting, "message": waiting_message}}
    if terminated:
        container["state"] = {"terminated": terminated}
    if last_terminated:
        container["lastState"] = {"terminated": last_terminated}
    status["containerStatuses"] = [container]
    return {"metadata": {"name": name, "labels": labels}, "status": status}


def obs(**kwargs: Any) -> Observation:
    base: dict[str, Any] = {"generation": 3, "endpoint": ENDPOINT, "gpu_product": "NVIDIA-H100-80GB-HBM3"}
    base.update(kwargs)
    return Observation(**base)


def cond(status: dict[str, Any], type_: str) -> tuple[str, str, str]:
    found = next(c for c in status["conditions"] if c["type"] == type_)
    return found["status"], found["reason"], found["message"]


def run(observation: Observation, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    return status_dict(compute_status(observation, previous, NOW))


def test_invalid_spec_is_failed_with_the_message() -> None:
    status = run(obs(spec_error="spec.model.revision: is required for hf:// sources"))
    assert status["phase"] == "Failed"
    ready = cond(status, "Ready")
    assert ready[:2] == ("False", "InvalidSpec")
    assert "spec.model.revision: is required" in ready[2]
    assert cond(status, "Progressing")[:2] == ("False", "InvalidSpec")
    assert cond(status, "Degraded")[:2] == ("True", "InvalidSpec")
    assert "endpoint" not in status


def test_missing_kuberay_is_pending_with_a_clear_message() -> None:
    status = run(obs(kuberay_missing=True))
    assert status["phase"] == "Pending"
    assert cond(status, "Ready")[1] == "KubeRayNotInstalled"
    assert cond(status, "Ready")[2].startswith("KubeRay is not installed: RayService CRD not found")


@pytest.mark.parametrize(
    ("observation", "phase", "reason"),
    [
        (obs(cache_wanted=True), "Pending", "Pending"),
        (obs(cache_wanted=True, job=job("running")), "Deploying", "DownloadingModel"),
        (obs(cache_wanted=True, job=job("complete")), "Pending", "Pending"),
        (obs(rayservice=rayservice(app=None)), "Pending", "Pending"),
        (obs(), "Pending", "Pending"),
        (obs(rayservice=rayservice(app="DEPLOYING", ready=0)), "Deploying", "Deploying"),
        (obs(rayservice=rayservice(app="NOT_STARTED", ready=0)), "Deploying", "Deploying"),
        (obs(rayservice=rayservice(ready=0, desired=1, ready_condition=True)), "Deploying", "NoReadyReplica"),
        (obs(rayservice=rayservice(ready=2, desired=2)), "Ready", "Serving"),
        (obs(min_replicas=0, rayservice=rayservice(ready=0, desired=0)), "ScaledToZero", "ScaledToZero"),
        (obs(cache_wanted=True, job=job("complete"), rayservice=rayservice(ready=1)), "Ready", "Serving"),
    ],
)
def test_phase_and_ready_reason(observation: Observation, phase: str, reason: str) -> None:
    status = run(observation)
    assert (status["phase"], cond(status, "Ready")[1]) == (phase, reason)
    assert status["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Progressing", "Degraded", "UpgradePending"]


def test_ready_publishes_endpoint_and_replicas() -> None:
    status = run(obs(rayservice=rayservice(ready=2, desired=2)))
    assert status["endpoint"] == ENDPOINT
    assert status["replicas"] == {"desired": 2, "ready": 2}
    assert cond(status, "Progressing")[:2] == ("False", "Complete")
    assert cond(status, "Degraded")[:2] == ("False", "AsExpected")


def test_deploying_publishes_no_endpoint() -> None:
    status = run(obs(rayservice=rayservice(app="DEPLOYING", ready=0)))
    assert "endpoint" not in status
    assert cond(status, "Progressing")[:2] == ("True", "Deploying")


def test_scaling_up_and_upgrading_are_progressing_while_ready() -> None:
    scaling = run(obs(rayservice=rayservice(ready=1, desired=3)))
    assert scaling["phase"] == "Ready"
    assert cond(scaling, "Progressing")[:2] == ("True", "ScalingUp")
    upgrading = run(obs(rayservice=rayservice(ready=1, desired=1, upgrading=True)))
    assert upgrading["phase"] == "Ready"
    assert cond(upgrading, "Progressing")[:2] == ("True", "Upgrading")


def test_scaled_to_zero_keeps_the_endpoint_and_wakes() -> None:
    idle = run(obs(min_replicas=0, rayservice=rayservice(ready=0, desired=0)))
    assert idle["phase"] == "ScaledToZero"
    assert idle["endpoint"] == ENDPOINT
    assert idle["replicas"] == {"desired": 0, "ready": 0}
    assert cond(idle, "Ready")[0] == "True"
    assert cond(idle, "Progressing")[:2] == ("False", "Idle")
    waking = run(obs(min_replicas=0, rayservice=rayservice(ready=0, desired=1)))
    assert waking["phase"] == "ScaledToZero"
    assert cond(waking, "Progressing")[:2] == ("True", "Waking")
    assert "900 s" in cond(waking, "Progressing")[2]
    # The wake budget is published with the endpoint, for the gateway's per-model wait.
    assert idle["wakeTimeoutSeconds"] == waking["wakeTimeoutSeconds"] == 900


def test_a_note_on_the_cache_is_said_with_ready_only_while_it_holds() -> None:
    note = "Scales to zero without a weight cache."
    idle = run(obs(min_replicas=0, rayservice=rayservice(ready=0, desired=0), cache_note=note))
    serving = run(obs(min_replicas=0, rayservice=rayservice(ready=1, desired=1), cache_note=note))
    for status in (idle, serving):
        assert cond(status, "Ready")[0] == "True" and cond(status, "Ready")[2].endswith(f". {note}")
    starting = run(
        obs(min_replicas=0, rayservice=rayservice(ready=0, desired=1, app="DEPLOYING"), cache_note=note)
    )
    assert cond(starting, "Ready")[0] == "False" and note not in cond(starting, "Ready")[2]


def test_zero_replicas_with_min_one_is_not_scaled_to_zero() -> None:
    status = run(obs(min_replicas=1, rayservice=rayservice(ready=0, desired=1)))
    assert status["phase"] != "ScaledToZero"
    assert cond(status, "Ready")[0] == "False"


def test_download_failure_is_failed_with_the_pods_message() -> None:
    failed_pod = pod(
        "llama-download-1-xyz",
        job_name="llama-download-1",
        terminated={"exitCode": 1, "reason": "Error", "message": "404 Client Error: Not Found for url"},
    )
    status = run(obs(cache_wanted=True, job=job("failed"), pods=[failed_pod]))
    assert status["phase"] == "Failed"
    ready = cond(status, "Ready")
    assert ready[1] == "ModelDownloadFailed"
    assert ready[2].startswith("model download failed: 404 Client Error")
    assert cond(status, "Degraded")[:2] == ("True", "ModelDownloadFailed")


def test_download_failure_without_pods_uses_the_job_condition() -> None:
    status = run(
        obs(cache_wanted=True, job=job("failed", message="Job has reached the specified backoff limit"))
    )
    assert "model download failed: Job has reached the specified backoff limit" in cond(status, "Ready")[2]


def test_download_image_pull_problem_is_degraded() -> None:
    stuck = pod("dl", job_name="llama-download-1", waiting="ImagePullBackOff", waiting_message="not found")
    status = run(obs(cache_wanted=True, job=job("running"), pods=[stuck]))
    assert status["phase"] == "Degraded"
    assert cond(status, "Degraded")[1] == "ImagePullFailed"
    assert cond(status, "Progressing")[:2] == ("True", "DownloadingModel")


def test_unschedulable_gpu_pod_names_the_gpu_product() -> None:
    pending = pod(
        unschedulable="0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    )
    status = run(obs(rayservice=rayservice(app="DEPLOYING", ready=0), pods=[pending]))
    assert status["phase"] == "Degraded"
    degraded = cond(status, "Degraded")
    assert degraded[:2] == ("True", "Unschedulable")
    assert "no node has nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3" in degraded[2]
    assert cond(status, "Ready")[0] == "False"


def test_image_pull_failure_on_a_worker() -> None:
    stuck = pod(waiting="ErrImagePull", waiting_message="manifest unknown")
    status = run(obs(rayservice=rayservice(app="DEPLOYING", ready=0), pods=[stuck]))
    assert cond(status, "Degraded")[1] == "ImagePullFailed"
    assert "image pull failed for ray-llm:2.60" in cond(status, "Degraded")[2]


def test_crash_loop_out_of_memory_gives_a_hint() -> None:
    crashing = pod(waiting="CrashLoopBackOff", last_terminated={"reason": "OOMKilled", "exitCode": 137})
    status = run(obs(rayservice=rayservice(ready=1, desired=2), pods=[crashing]))
    assert status["phase"] == "Degraded"  # serving, but one replica keeps dying
    assert cond(status, "Ready")[0] == "True"
    assert "OOMKilled" in cond(status, "Degraded")[2]
    assert "spec.resources.memory" in cond(status, "Degraded")[2]


def test_serve_deploy_failed_is_failed_with_the_deployment_message() -> None:
    rs = rayservice(app="DEPLOY_FAILED", ready=0, deployment=("DEPLOY_FAILED", "CUDA out of memory"))
    status = run(obs(rayservice=rs))
    assert status["phase"] == "Failed"
    assert cond(status, "Degraded")[1] == "ServeDeployFailed"
    assert "LLMServer: CUDA out of memory" in cond(status, "Degraded")[2]


def test_serve_unhealthy_is_degraded() -> None:
    rs = rayservice(app="UNHEALTHY", ready=1, ready_condition=False, app_message="replica died")
    status = run(obs(rayservice=rs))
    assert status["phase"] == "Degraded"
    assert cond(status, "Degraded")[:2] == ("True", "ServeUnhealthy")


def test_ray_cluster_replica_failure_is_degraded() -> None:
    rs = rayservice(app="DEPLOYING", ready=0, replica_failure="pods is forbidden: exceeded quota")
    status = run(obs(rayservice=rs))
    assert status["phase"] == "Degraded"
    assert "exceeded quota" in cond(status, "Degraded")[2]


def test_refused_children_are_reported() -> None:
    status = run(obs(refused=["the API refused RayService llama: admission webhook denied"]))
    assert status["phase"] == "Degraded"
    assert "admission webhook denied" in cond(status, "Degraded")[2]


def test_transition_time_moves_only_when_the_status_flips() -> None:
    first = status_dict(compute_status(obs(rayservice=rayservice(ready=1, desired=2)), None, NOW))
    # Same statuses, other reasons and messages: the clocks stay.
    second = status_dict(compute_status(obs(rayservice=rayservice(ready=2, desired=2)), first, LATER))
    for type_ in ("Ready", "Degraded"):
        assert next(c for c in second["conditions"] if c["type"] == type_)["lastTransitionTime"] == NOW
    # Progressing flipped True -> False: its clock restarts.
    assert next(c for c in second["conditions"] if c["type"] == "Progressing")["lastTransitionTime"] == LATER
    third = status_dict(compute_status(obs(rayservice=rayservice(app="DEPLOYING", ready=0)), second, LATER))
    assert next(c for c in third["conditions"] if c["type"] == "Ready")["lastTransitionTime"] == LATER


def test_unchanged_status_needs_no_write() -> None:
    first = status_dict(compute_status(obs(rayservice=rayservice()), None, NOW))
    again = status_dict(compute_status(obs(rayservice=rayservice()), first, LATER))
    assert not status_changed(first, again)
    assert status_changed(
        first, status_dict(compute_status(obs(rayservice=rayservice(ready=0)), first, LATER))
    )


def test_deleted_pods_are_ignored() -> None:
    leaving = pod(waiting="ErrImagePull")
    leaving["metadata"]["deletionTimestamp"] = NOW
    assert pod_problems([leaving]) == []


def test_status_is_the_api_model_and_reads_back_the_same() -> None:
    status = compute_status(obs(rayservice=rayservice(ready=1, desired=2)), None, NOW)
    assert isinstance(status, ModelDeploymentStatus)
    assert ModelDeploymentStatus.model_validate(status_dict(status)) == status
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason, ready.last_transition_time) == ("True", "Serving", NOW)


def test_digest_mismatch_names_both_digests_from_the_verify_steps_own_words(tmp_path: Any) -> None:
    """The termination message is what `respublica digest --expect` really prints on a mismatch."""
    from typer.testing import CliRunner

    from respublica.cli import app

    (tmp_path / "config.json").write_text("{}")
    expected = "sha256:" + "ab" * 32
    printed = CliRunner().invoke(app, ["digest", "--expect", expected, str(tmp_path)])
    assert printed.exit_code == 3
    verify_pod = pod(
        "llama-download-1-xyz",
        job_name="llama-download-1",
        terminated={"exitCode": 3, "reason": "Error", "message": printed.stderr},
    )
    status = run(obs(cache_wanted=True, job=job("failed"), pods=[verify_pod]))
    assert status["phase"] == "Failed"
    found = printed.stderr.split("found ")[1][:71]
    for type_ in ("Ready", "Degraded"):
        reason, message = cond(status, type_)[1:]
        assert reason == "DigestMismatch"
        assert expected in message and found in message and found != expected
    assert cond(status, "Progressing")[:2] == ("False", "DigestMismatch")


def test_a_download_failure_that_merely_mentions_a_digest_is_not_a_mismatch() -> None:
    failed_pod = pod(
        "llama-download-1-xyz",
        job_name="llama-download-1",
        terminated={"exitCode": 1, "reason": "Error", "message": "expected sha256:" + "ab" * 32},
    )
    status = run(obs(cache_wanted=True, job=job("failed"), pods=[failed_pod]))
    assert cond(status, "Ready")[1] == "ModelDownloadFailed"


def _upgrading(pending: str | None, active: str | None = "llama-x1") -> dict[str, Any]:
    service = rayservice(upgrading=pending is not None)
    if active is None:
        service["status"]["activeServiceStatus"] = {}
    if pending:
        service["status"]["pendingServiceStatus"] = {"rayClusterName": pending}
    return service


def test_a_new_cluster_upgrade_says_the_gpus_are_held_twice() -> None:
    status = run(obs(gpus=2, rayservice=_upgrading("llama-x2")))
    state, reason, message = cond(status, "UpgradePending")
    assert (state, reason) == ("True", "NewCluster")
    assert "llama-x2" in message and "llama-x1" in message
    assert "GPUs are held twice (2 GPUs per replica" in message
    assert status["phase"] == "Ready"  # the old cluster keeps serving


def test_an_in_place_upgrade_says_it_means_downtime() -> None:
    status = run(obs(upgrade_strategy="InPlace", rayservice=_upgrading("llama-x2", active=None)))
    state, reason, message = cond(status, "UpgradePending")
    assert (state, reason) == ("True", "InPlace")
    assert "downtime" in message and "no extra GPUs" in message


def test_no_pending_cluster_is_no_upgrade_and_the_first_cluster_is_none_either() -> None:
    assert cond(run(obs(rayservice=_upgrading(None))), "UpgradePending")[:2] == ("False", "NoUpgrade")
    first = run(obs(rayservice=_upgrading("llama-x1", active=None)))
    assert cond(first, "UpgradePending")[:2] == ("False", "NoUpgrade")


def test_a_refused_download_names_the_credential_fix() -> None:
    """huggingface_hub's GatedRepoError (a 401 on a gated repository) as the pod's last log line."""
    failed_pod = pod(
        "llama-download-1-xyz",
        job_name="llama-download-1",
        terminated={
            "exitCode": 1,
            "reason": "Error",
            "message": "huggingface_hub.errors.GatedRepoError: 401 Client Error. Cannot access gated repo",
        },
    )
    status = run(obs(cache_wanted=True, job=job("failed"), pods=[failed_pod]))
    reason, message = cond(status, "Ready")[1:3]
    assert reason == "ModelDownloadFailed"
    assert "set spec.model.secretRef to a Secret with HF_TOKEN" in message


def test_a_missing_revision_does_not_blame_the_credential() -> None:
    failed_pod = pod(
        "llama-download-1-xyz",
        job_name="llama-download-1",
        terminated={"exitCode": 1, "reason": "Error", "message": "RevisionNotFoundError: 404 Client Error"},
    )
    message = cond(run(obs(cache_wanted=True, job=job("failed"), pods=[failed_pod])), "Ready")[2]
    assert "HF_TOKEN" not in message and "spec.model.source/revision" in message
