"""A ModelDeployment's status, computed from what its children report (pure).

The operator reads the RayService KubeRay keeps up to date, the download Job (when the model is
cached) and the pods behind them, and turns them into one phase, three conditions (Ready,
Progressing, Degraded) with messages a person can act on, the replica counts and the endpoint.
Nothing here talks to the API: the handlers gather an `Observation` and write back `Status.to_dict()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from respublica.operator.dig import dig

Phase = Literal["Pending", "Deploying", "Ready", "ScaledToZero", "Degraded", "Failed"]
CONDITION_TYPES = ("Ready", "Progressing", "Degraded")

Obj = Mapping[str, Any]

# Ray Serve application states (ray.serve.schema.ApplicationStatus) as KubeRay copies them.
APP_RUNNING = "RUNNING"
APP_FAILED = "DEPLOY_FAILED"
APP_UNHEALTHY = "UNHEALTHY"

# Container waiting reasons that mean the image never arrives without someone acting.
_IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


@dataclass(frozen=True)
class Observation:
    """Everything the status is computed from, gathered by the handlers."""

    generation: int | None
    endpoint: str | None
    min_replicas: int = 1
    gpus: int = 1
    gpu_product: str | None = None
    spec_error: str | None = None
    kuberay_missing: bool = False
    cache_wanted: bool = False
    rayservice: Obj | None = None
    job: Obj | None = None
    pods: Sequence[Obj] = ()
    refused: Sequence[str] = ()  # children the API refused (admission, quota), as messages


@dataclass(frozen=True)
class Problem:
    """Something that keeps the model from serving as declared, with what to do about it."""

    reason: str
    message: str
    permanent: bool = False


@dataclass(frozen=True)
class Status:
    """The computed status, ready to be written to `.status` of the ModelDeployment."""

    phase: Phase
    conditions: list[dict[str, Any]]
    observed_generation: int | None
    replicas: dict[str, int]
    endpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": self.phase,
            "conditions": self.conditions,
            "replicas": self.replicas,
        }
        if self.observed_generation is not None:
            out["observedGeneration"] = self.observed_generation
        if self.endpoint is not None:
            out["endpoint"] = self.endpoint
        return out


@dataclass
class _Verdict:
    phase: Phase
    ready: tuple[bool, str, str]
    progressing: tuple[bool, str, str]
    degraded: tuple[bool, str, str] = (False, "AsExpected", "Nothing is wrong.")
    publish_endpoint: bool = False
    replicas: dict[str, int] = field(default_factory=lambda: {"desired": 0, "ready": 0})


def _condition(conditions: Any, type_: str) -> Obj | None:
    for cond in conditions or ():
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


def _is_true(conditions: Any, type_: str) -> bool:
    cond = _condition(conditions, type_)
    return cond is not None and cond.get("status") == "True"


# --- the download Job -------------------------------------------------------------------------


def _is_job_pod(pod: Obj) -> bool:
    labels = dig(pod, "metadata", "labels") or {}
    return "job-name" in labels or "batch.kubernetes.io/job-name" in labels


def _termination_message(pod: Obj) -> str | None:
    for status in dig(pod, "status", "containerStatuses") or ():
        for state in ("state", "lastState"):
            terminated = dig(status, state, "terminated")
            if terminated and terminated.get("exitCode", 0) != 0:
                text = (terminated.get("message") or "").strip()
                return text or f"exit code {terminated.get('exitCode')} ({terminated.get('reason', 'Error')})"
    return None


def _job_verdict(job: Obj, pods: Sequence[Obj]) -> Problem | Literal["complete", "running"]:
    conditions = dig(job, "status", "conditions")
    if _is_true(conditions, "Failed"):
        detail = next((m for m in map(_termination_message, pods) if m), None)
        if detail is None:
            cond = _condition(conditions, "Failed") or {}
            detail = cond.get("message") or cond.get("reason") or "the download Job failed"
        name = dig(job, "metadata", "name")
        return Problem(
            "ModelDownloadFailed",
            f"model download failed: {detail} (Job {name}; fix spec.model.source/revision or the "
            "hub credentials, then change the spec to retry)",
            permanent=True,
        )
    if _is_true(conditions, "Complete") or (dig(job, "status", "succeeded") or 0) > 0:
        return "complete"
    return "running"


# --- pods -------------------------------------------------------------------------------------


def pod_problems(pods: Sequence[Obj], gpus: int = 1, gpu_product: str | None = None) -> list[Problem]:
    """What the pods say is wrong: unschedulable, image pulls, crash loops, bad configuration."""
    problems: list[Problem] = []
    for pod in pods:
        name = dig(pod, "metadata", "name") or "?"
        if dig(pod, "metadata", "deletionTimestamp"):
            continue
        scheduled = _condition(dig(pod, "status", "conditions"), "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            detail = scheduled.get("message") or "no node fits"
            if gpu_product:
                what = f"no node has nvidia.com/gpu.product={gpu_product} with {gpus} free nvidia.com/gpu"
            elif gpus > 0:
                what = f"no node has {gpus} free nvidia.com/gpu"
            else:
                what = "no node has room for it"
            problems.append(
                Problem(
                    "Unschedulable",
                    f"pod {name} cannot be scheduled: {what} ({detail}). Add such a node, or change "
                    "spec.resources (gpus, gpuProduct, nodeSelector, tolerations).",
                )
            )
            continue
        statuses = [
            *(dig(pod, "status", "initContainerStatuses") or ()),
            *(dig(pod, "status", "containerStatuses") or ()),
        ]
        for status in statuses:
            waiting = dig(status, "state", "waiting") or {}
            reason = waiting.get("reason")
            image = status.get("image", "?")
            detail = waiting.get("message") or reason
            if reason in _IMAGE_PULL_REASONS:
                problems.append(
                    Problem(
                        "ImagePullFailed",
                        f"image pull failed for {image} in pod {name}: {detail}. Check spec.image, the "
                        "registry and the pull secret.",
                    )
                )
            elif reason in _CONFIG_REASONS:
                problems.append(Problem("ContainerConfigError", f"pod {name} cannot start {image}: {detail}"))
            elif reason == "CrashLoopBackOff":
                last = dig(status, "lastState", "terminated") or {}
                why = last.get("reason") or "Error"
                hint = (
                    " (out of memory: raise spec.resources.memory or lower spec.engine.maxModelLen)"
                    if why == "OOMKilled"
                    else ""
                )
                problems.append(
                    Problem(
                        "CrashLoop",
                        f"container {status.get('name', '?')} in pod {name} keeps crashing: {why}, exit "
                        f"code {last.get('exitCode', '?')}{hint}. See `kubectl logs {name} --previous`.",
                    )
                )
    return problems


# --- the RayService ---------------------------------------------------------------------------


def _serve_problems(rayservice: Obj) -> tuple[list[Problem], str | None]:
    """Problems in the Serve applications, and their overall state (None: not reported yet)."""
    apps = dig(rayservice, "status", "activeServiceStatus", "applicationStatuses") or {}
    pending = dig(rayservice, "status", "pendingServiceStatus", "applicationStatuses") or {}
    problems: list[Problem] = []
    states: list[str] = []
    for source in (apps, pending):
        for app_name, app in source.items():
            state = str(app.get("status") or "")
            if source is apps:
                states.append(state)
            if state in (APP_FAILED, APP_UNHEALTHY):
                detail = (app.get("message") or "").strip()
                for dep_name, dep in (app.get("serveDeploymentStatuses") or {}).items():
                    if dep.get("status") in ("UNHEALTHY", "DEPLOY_FAILED") and dep.get("message"):
                        detail = f"{dep_name}: {dep['message'].strip()}"
                        break
                reason = "ServeDeployFailed" if state == APP_FAILED else "ServeUnhealthy"
                verb = "failed to deploy" if state == APP_FAILED else "is unhealthy"
                problems.append(
                    Problem(
                        reason,
                        f"Serve application {app_name} {verb}: {detail or 'no message from Ray Serve'}"[
                            :2000
                        ],
                        permanent=state == APP_FAILED,
                    )
                )
    if not states:
        return problems, None
    if all(s == APP_RUNNING for s in states):
        return problems, APP_RUNNING
    return problems, next(s for s in states if s != APP_RUNNING)


def _cluster_problems(rayservice: Obj) -> list[Problem]:
    problems = []
    for key in ("activeServiceStatus", "pendingServiceStatus"):
        conditions = dig(rayservice, "status", key, "rayClusterStatus", "conditions")
        failure = _condition(conditions, "RayClusterReplicaFailure")
        if failure and failure.get("status") == "True":
            problems.append(
                Problem(
                    "ReplicaFailure",
                    f"KubeRay cannot create pods: {failure.get('message') or failure.get('reason')}",
                )
            )
    return problems


def _replicas(rayservice: Obj) -> dict[str, int]:
    cluster = dig(rayservice, "status", "activeServiceStatus", "rayClusterStatus") or {}
    desired = int(cluster.get("desiredWorkerReplicas") or 0)
    ready = int(cluster.get("readyWorkerReplicas") or cluster.get("availableWorkerReplicas") or 0)
    return {"desired": desired, "ready": ready}


def _verdict(obs: Observation) -> _Verdict:
    if obs.spec_error:
        msg = f"the spec is invalid: {obs.spec_error}. Fix it with kubectl edit or apply; it is not retried."
        return _Verdict(
            "Failed",
            ready=(False, "InvalidSpec", msg),
            progressing=(False, "InvalidSpec", "Nothing is deployed until the spec is fixed."),
            degraded=(True, "InvalidSpec", msg),
        )
    if obs.kuberay_missing:
        msg = (
            "KubeRay is not installed: RayService CRD not found (ray.io/v1 rayservices). Install the "
            "KubeRay operator; respublica retries on its own."
        )
        return _Verdict(
            "Pending",
            ready=(False, "KubeRayNotInstalled", msg),
            progressing=(False, "KubeRayNotInstalled", msg),
        )

    pods = list(obs.pods)
    job_pods = [p for p in pods if _is_job_pod(p)]
    ray_pods = [p for p in pods if not _is_job_pod(p)]

    if obs.cache_wanted:
        if obs.job is None:
            msg = "Waiting for the model download Job to be created."
            return _Verdict("Pending", ready=(False, "Pending", msg), progressing=(True, "Creating", msg))
        job = _job_verdict(obs.job, job_pods)
        if isinstance(job, Problem):
            return _Verdict(
                "Failed",
                ready=(False, job.reason, job.message),
                progressing=(False, job.reason, "Stopped: the download failed."),
                degraded=(True, job.reason, job.message),
            )
        if job == "running":
            msg = "Downloading the model weights into the cache volume."
            problems = pod_problems(job_pods, gpus=0)
            if problems:
                first = problems[0]
                return _Verdict(
                    "Degraded",
                    ready=(False, "DownloadingModel", msg),
                    progressing=(True, "DownloadingModel", msg),
                    degraded=(True, first.reason, first.message),
                )
            return _Verdict(
                "Deploying",
                ready=(False, "DownloadingModel", msg),
                progressing=(True, "DownloadingModel", msg),
            )

    refused = [
        Problem("ApplyRefused", f"{text}. Check quotas and admission policies.") for text in obs.refused
    ]
    if obs.rayservice is None:
        msg = "Waiting for the RayService to be created."
        if refused:
            return _Verdict(
                "Degraded",
                ready=(False, "ApplyRefused", refused[0].message),
                progressing=(False, "ApplyRefused", refused[0].message),
                degraded=(True, "ApplyRefused", refused[0].message),
            )
        return _Verdict("Pending", ready=(False, "Pending", msg), progressing=(True, "Creating", msg))

    rs = obs.rayservice
    replicas = _replicas(rs)
    serve_problems, app_state = _serve_problems(rs)
    problems = [
        *serve_problems,
        *refused,
        *_cluster_problems(rs),
        *pod_problems(ray_pods, obs.gpus, obs.gpu_product),
    ]
    conditions = dig(rs, "status", "conditions")
    upgrading = _is_true(conditions, "UpgradeInProgress")
    has_status = bool(dig(rs, "status", "serviceStatus")) or bool(conditions) or app_state is not None
    serving = app_state == APP_RUNNING and (
        _is_true(conditions, "Ready") or dig(rs, "status", "serviceStatus") == "Running" or not conditions
    )

    permanent = next((p for p in problems if p.permanent), None)
    if permanent is not None and not serving:
        return _Verdict(
            "Failed",
            ready=(False, permanent.reason, permanent.message),
            progressing=(False, permanent.reason, "Stopped: change the spec to retry."),
            degraded=(True, permanent.reason, permanent.message),
            replicas=replicas,
        )
    degraded = (
        (True, problems[0].reason, problems[0].message)
        if problems
        else (False, "AsExpected", "Nothing is wrong.")
    )

    if serving:
        if replicas["ready"] == 0 and obs.min_replicas == 0:
            waking = replicas["desired"] > 0
            msg = (
                "Scaled to zero: no replica is running; the endpoint holds the first request while a "
                "replica starts."
            )
            return _Verdict(
                "Degraded" if problems else "ScaledToZero",
                ready=(True, "ScaledToZero", msg),
                progressing=(
                    (True, "ScalingUp", "A request woke the model: a replica is starting.")
                    if waking
                    else (False, "Idle", "No replica is needed now.")
                ),
                degraded=degraded,
                publish_endpoint=True,
                replicas=replicas,
            )
        if replicas["ready"] == 0:
            # The application is up but no replica is: nothing answers until one is ready.
            msg = "The Serve application is up; waiting for the first replica to become ready."
            return _Verdict(
                "Degraded" if problems else "Deploying",
                ready=(False, "NoReadyReplica", msg),
                progressing=(True, "ScalingUp", msg),
                degraded=degraded,
                replicas=replicas,
            )
        msg = f"Serving: {replicas['ready']} of {replicas['desired']} replicas ready."
        if upgrading:
            progressing = (
                True,
                "Upgrading",
                "A new Ray cluster is starting; traffic moves when it is ready.",
            )
        elif replicas["ready"] < replicas["desired"]:
            progressing = (
                True,
                "ScalingUp",
                f"Starting {replicas['desired'] - replicas['ready']} more replicas.",
            )
        else:
            progressing = (False, "Complete", "The deployment matches the spec.")
        return _Verdict(
            "Degraded" if problems else "Ready",
            ready=(True, "Serving", msg),
            progressing=progressing,
            degraded=degraded,
            publish_endpoint=True,
            replicas=replicas,
        )

    if not has_status:
        msg = "The RayService is created; waiting for KubeRay to report on it."
        return _Verdict(
            "Pending", ready=(False, "Pending", msg), progressing=(True, "Creating", msg), replicas=replicas
        )
    state = app_state or "NOT_STARTED"
    msg = f"Deploying: the Ray cluster and the Serve application are starting (application {state})."
    return _Verdict(
        "Degraded" if problems else "Deploying",
        ready=(False, "Deploying", msg),
        progressing=(True, "Deploying", msg),
        degraded=degraded,
        replicas=replicas,
    )


def _merge_condition(
    previous: Sequence[Obj], type_: str, value: tuple[bool, str, str], generation: int | None, now: str
) -> dict[str, Any]:
    status = "True" if value[0] else "False"
    old = _condition(previous, type_)
    # A condition's clock only restarts when its status flips, not when its reason or message moves.
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": value[1],
        "message": value[2][:4096],
        "lastTransitionTime": since or now,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def compute_status(obs: Observation, previous: Obj | None, now: str) -> Status:
    """The status for an observation; `previous` is the current `.status` (for transition times)."""
    verdict = _verdict(obs)
    old_conditions = (previous or {}).get("conditions") or []
    values = {"Ready": verdict.ready, "Progressing": verdict.progressing, "Degraded": verdict.degraded}
    conditions = [
        _merge_condition(old_conditions, t, values[t], obs.generation, now) for t in CONDITION_TYPES
    ]
    return Status(
        phase=verdict.phase,
        conditions=conditions,
        observed_generation=obs.generation,
        replicas=verdict.replicas,
        endpoint=obs.endpoint if verdict.publish_endpoint else None,
    )


def status_changed(old: Obj | None, new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change anything (so an unchanged status costs no write)."""
    old = old or {}
    return any(old.get(key) != new.get(key) for key in {*old.keys(), *new.keys()})
