"""A ModelDeployment's status, computed from what its children report (pure).

The operator reads the RayService KubeRay keeps up to date, the download Job (when the model is
cached) and the pods behind them, and turns them into one phase, three conditions (Ready,
Progressing, Degraded) with messages a person can act on, the replica counts and the endpoint.
Nothing here talks to the API: the reconciler gathers an `Observation`, and `compute_status` returns
the API's own `ModelDeploymentStatus` (so what is written is what the CRD's schema describes).

The decision is a list of small rules (`verdict`): a broken spec, KubeRay missing, the model
download, no RayService yet, then what the RayService reports; the first rule that answers decides.
Each rule returns a `Verdict` of three `Condition`s, or None to pass to the next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from respublica.api import models
from respublica.api.model_digest import parse_mismatch
from respublica.api.models import Phase
from respublica.operator.dig import dig

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "UpgradePending")

Obj = Mapping[str, Any]

# The CRD's bound on a condition's message (the model refuses a longer one).
MESSAGE_MAX: int = models.Condition.model_fields["message"].metadata[0].max_length

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
    wake_timeout_seconds: int = 900  # spec.scaling.wakeTimeoutSeconds, published with the endpoint
    upgrade_strategy: str = "NewCluster"  # spec.upgrade.strategy
    # Said with Ready while the model serves or sleeps: e.g. that it scales to zero without a weight
    # cache (render/default_cache.py `uncached_at_zero`).
    cache_note: str | None = None


@dataclass(frozen=True)
class Problem:
    """Something that keeps the model from serving as declared, with what to do about it."""

    reason: str
    message: str
    permanent: bool = False

    def condition(self) -> Condition:
        """As the Degraded condition: it holds, for this reason."""
        return Condition(True, self.reason, self.message)


@dataclass(frozen=True)
class Condition:
    """What one condition says, before it is stamped with its type, generation and times."""

    holds: bool
    reason: str  # CamelCase
    message: str  # what happened and what to do


NOTHING_WRONG = Condition(False, "AsExpected", "Nothing is wrong.")


@dataclass(frozen=True)
class Replicas:
    desired: int = 0
    ready: int = 0


@dataclass(frozen=True)
class Verdict:
    """The phase and the three conditions one rule decided on."""

    phase: Phase
    ready: Condition
    progressing: Condition
    degraded: Condition = NOTHING_WRONG
    publish_endpoint: bool = False
    replicas: Replicas = Replicas()


def _degraded(problems: Sequence[Problem]) -> Condition:
    """Degraded names the first problem found, or says nothing is wrong."""
    return problems[0].condition() if problems else NOTHING_WRONG


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


# What huggingface_hub says when the hub refuses the credential or the lack of one
# (huggingface_hub/utils/_http.py hf_raise_for_status: GatedRepoError, RepositoryNotFoundError for
# a private repository, both carrying the HTTP status).
_UNAUTHORIZED = ("401", "403", "GatedRepoError", "RepositoryNotFoundError", "Unauthorized")


def _download_fix(detail: str) -> str:
    if any(word in detail for word in _UNAUTHORIZED):
        return (
            "the hub refused the download: set spec.model.secretRef to a Secret with HF_TOKEN (a token "
            "that may read this repository, with its license accepted)"
        )
    return "fix spec.model.source/revision or spec.model.secretRef/endpoint"


def _job_verdict(job: Obj, pods: Sequence[Obj]) -> Problem | Literal["complete", "running"]:
    conditions = dig(job, "status", "conditions")
    if _is_true(conditions, "Failed"):
        detail = next((m for m in map(_termination_message, pods) if m), None)
        if detail is None:
            cond = _condition(conditions, "Failed") or {}
            detail = cond.get("message") or cond.get("reason") or "the download Job failed"
        name = dig(job, "metadata", "name")
        mismatch = parse_mismatch(detail)
        if mismatch is not None:
            expected, found = mismatch
            return Problem(
                "DigestMismatch",
                f"the downloaded model files do not match spec.model.digest: expected {expected}, found "
                f"{found} (Job {name}); nothing serves them. Fix spec.model.revision (or the source) "
                "to the intended files, or set spec.model.digest to the found value if these are them.",
                permanent=True,
            )
        return Problem(
            "ModelDownloadFailed",
            f"model download failed: {detail} (Job {name}; {_download_fix(detail)}, then change the "
            "spec to retry)",
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


def _replicas(rayservice: Obj) -> Replicas:
    cluster = dig(rayservice, "status", "activeServiceStatus", "rayClusterStatus") or {}
    desired = int(cluster.get("desiredWorkerReplicas") or 0)
    ready = int(cluster.get("readyWorkerReplicas") or cluster.get("availableWorkerReplicas") or 0)
    return Replicas(desired=desired, ready=ready)


# --- the rules: each reads the observation and answers, or passes to the next one -------------


def _invalid_spec(obs: Observation) -> Verdict | None:
    if not obs.spec_error:
        return None
    msg = f"the spec is invalid: {obs.spec_error}. Fix it with kubectl edit or apply; it is not retried."
    return Verdict(
        "Failed",
        ready=Condition(False, "InvalidSpec", msg),
        progressing=Condition(False, "InvalidSpec", "Nothing is deployed until the spec is fixed."),
        degraded=Condition(True, "InvalidSpec", msg),
    )


def _kuberay_missing(obs: Observation) -> Verdict | None:
    if not obs.kuberay_missing:
        return None
    msg = (
        "KubeRay is not installed: RayService CRD not found (ray.io/v1 rayservices). Install the "
        "KubeRay operator; respublica retries on its own."
    )
    return Verdict(
        "Pending",
        ready=Condition(False, "KubeRayNotInstalled", msg),
        progressing=Condition(False, "KubeRayNotInstalled", msg),
    )


def _waiting_to_be_created(what: str) -> Verdict:
    msg = f"Waiting for the {what} to be created."
    return Verdict(
        "Pending", ready=Condition(False, "Pending", msg), progressing=Condition(True, "Creating", msg)
    )


def _download(obs: Observation) -> Verdict | None:
    """The model cache: nothing else matters until its download Job has completed."""
    if not obs.cache_wanted:
        return None
    if obs.job is None:
        return _waiting_to_be_created("model download Job")
    job_pods = [p for p in obs.pods if _is_job_pod(p)]
    job = _job_verdict(obs.job, job_pods)
    if isinstance(job, Problem):
        return Verdict(
            "Failed",
            ready=Condition(False, job.reason, job.message),
            progressing=Condition(False, job.reason, "Stopped: the download failed."),
            degraded=job.condition(),
        )
    if job == "complete":
        return None
    msg = "Downloading the model weights into the cache volume."
    problems = pod_problems(job_pods, gpus=0)
    return Verdict(
        "Degraded" if problems else "Deploying",
        ready=Condition(False, "DownloadingModel", msg),
        progressing=Condition(True, "DownloadingModel", msg),
        degraded=_degraded(problems),
    )


def _refusals(obs: Observation) -> list[Problem]:
    return [Problem("ApplyRefused", f"{text}. Check quotas and admission policies.") for text in obs.refused]


def _no_rayservice(obs: Observation) -> Verdict | None:
    if obs.rayservice is not None:
        return None
    refused = _refusals(obs)
    if not refused:
        return _waiting_to_be_created("RayService")
    first = refused[0].condition()
    return Verdict(
        "Degraded",
        ready=Condition(False, first.reason, first.message),
        progressing=Condition(False, first.reason, first.message),
        degraded=first,
    )


@dataclass(frozen=True)
class _RayServiceView:
    """What the RayService (and the pods behind it) say, read once for the rules below."""

    replicas: Replicas
    problems: list[Problem]
    app_state: str | None  # the Serve applications' overall state; None: not reported yet
    serving: bool  # the application runs and KubeRay calls the service ready
    upgrading: bool
    reported: bool  # KubeRay has written any status at all

    @classmethod
    def read(cls, obs: Observation, rayservice: Obj) -> _RayServiceView:
        serve_problems, app_state = _serve_problems(rayservice)
        ray_pods = [p for p in obs.pods if not _is_job_pod(p)]
        conditions = dig(rayservice, "status", "conditions")
        service_status = dig(rayservice, "status", "serviceStatus")
        return cls(
            replicas=_replicas(rayservice),
            problems=[
                *serve_problems,
                *_refusals(obs),
                *_cluster_problems(rayservice),
                *pod_problems(ray_pods, obs.gpus, obs.gpu_product),
            ],
            app_state=app_state,
            serving=app_state == APP_RUNNING
            and (_is_true(conditions, "Ready") or service_status == "Running" or not conditions),
            upgrading=_is_true(conditions, "UpgradeInProgress"),
            reported=bool(service_status) or bool(conditions) or app_state is not None,
        )

    def phase(self, healthy: Phase) -> Phase:
        return "Degraded" if self.problems else healthy


def _failed_for_good(view: _RayServiceView) -> Verdict | None:
    """A permanent problem (e.g. the Serve application failed to deploy) that no retry cures."""
    permanent = next((p for p in view.problems if p.permanent), None)
    if permanent is None or view.serving:
        return None
    return Verdict(
        "Failed",
        ready=Condition(False, permanent.reason, permanent.message),
        progressing=Condition(False, permanent.reason, "Stopped: change the spec to retry."),
        degraded=permanent.condition(),
        replicas=view.replicas,
    )


def _scaled_to_zero(view: _RayServiceView, obs: Observation) -> Verdict | None:
    if not view.serving or view.replicas.ready > 0 or obs.min_replicas > 0:
        return None
    msg = (
        "Scaled to zero: no replica is running; the endpoint holds the first request while a replica starts."
    )
    waking = view.replicas.desired > 0
    return Verdict(
        view.phase("ScaledToZero"),
        ready=Condition(True, "ScaledToZero", msg),
        progressing=(
            Condition(
                True,
                "Waking",
                "A request woke the model: a replica is starting; requests wait up to "
                f"{obs.wake_timeout_seconds} s (spec.scaling.wakeTimeoutSeconds).",
            )
            if waking
            else Condition(False, "Idle", "No replica is needed now.")
        ),
        degraded=_degraded(view.problems),
        publish_endpoint=True,
        replicas=view.replicas,
    )


def _no_ready_replica(view: _RayServiceView) -> Verdict | None:
    """The application is up but no replica is: nothing answers until one is ready."""
    if not view.serving or view.replicas.ready > 0:
        return None
    msg = "The Serve application is up; waiting for the first replica to become ready."
    return Verdict(
        view.phase("Deploying"),
        ready=Condition(False, "NoReadyReplica", msg),
        progressing=Condition(True, "ScalingUp", msg),
        degraded=_degraded(view.problems),
        replicas=view.replicas,
    )


def _serving(view: _RayServiceView) -> Verdict | None:
    if not view.serving:
        return None
    ready, desired = view.replicas.ready, view.replicas.desired
    if view.upgrading:
        progressing = Condition(
            True, "Upgrading", "A new Ray cluster is starting; traffic moves when it is ready."
        )
    elif ready < desired:
        progressing = Condition(True, "ScalingUp", f"Starting {desired - ready} more replicas.")
    else:
        progressing = Condition(False, "Complete", "The deployment matches the spec.")
    return Verdict(
        view.phase("Ready"),
        ready=Condition(True, "Serving", f"Serving: {ready} of {desired} replicas ready."),
        progressing=progressing,
        degraded=_degraded(view.problems),
        publish_endpoint=True,
        replicas=view.replicas,
    )


def _not_reported(view: _RayServiceView) -> Verdict | None:
    if view.reported:
        return None
    msg = "The RayService is created; waiting for KubeRay to report on it."
    return Verdict(
        "Pending",
        ready=Condition(False, "Pending", msg),
        progressing=Condition(True, "Creating", msg),
        replicas=view.replicas,
    )


def _deploying(view: _RayServiceView) -> Verdict:
    msg = (
        "Deploying: the Ray cluster and the Serve application are starting (application "
        f"{view.app_state or 'NOT_STARTED'})."
    )
    return Verdict(
        view.phase("Deploying"),
        ready=Condition(False, "Deploying", msg),
        progressing=Condition(True, "Deploying", msg),
        degraded=_degraded(view.problems),
        replicas=view.replicas,
    )


def _from_rayservice(obs: Observation, rayservice: Obj) -> Verdict:
    view = _RayServiceView.read(obs, rayservice)
    return (
        _failed_for_good(view)
        or _scaled_to_zero(view, obs)
        or _no_ready_replica(view)
        or _serving(view)
        or _not_reported(view)
        or _deploying(view)
    )


def verdict(obs: Observation) -> Verdict:
    """The phase and conditions an observation earns: the first rule that answers decides."""
    found = _invalid_spec(obs) or _kuberay_missing(obs) or _download(obs) or _no_rayservice(obs)
    if found is not None:
        return found
    assert obs.rayservice is not None  # _no_rayservice answered otherwise
    return _from_rayservice(obs, obs.rayservice)


# --- a pending Ray cluster -------------------------------------------------------------------------


def upgrade_pending(obs: Observation) -> Condition:
    """UpgradePending: KubeRay is building a new RayCluster for this model, and what that costs.

    KubeRay names the cluster it is building in `status.pendingServiceStatus.rayClusterName` both for a
    NewCluster upgrade (the active cluster keeps serving beside it) and after an InPlace upgrade deleted
    the active one (`shouldPrepareNewCluster` with neither cluster present). The very first cluster of
    a new model is pending too, but there is nothing to upgrade from (no active cluster name).
    """
    status = (obs.rayservice or {}).get("status") or {}
    pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName")
    active = (status.get("activeServiceStatus") or {}).get("rayClusterName")
    if not pending:
        return Condition(False, "NoUpgrade", "No new Ray cluster is being built.")
    if obs.upgrade_strategy == "InPlace":
        return Condition(
            True,
            "InPlace",
            f"The Ray cluster is being recreated as {pending} from the new spec (spec.upgrade.strategy "
            "InPlace): downtime: the model does not answer until it serves; no extra GPUs.",
        )
    if not active:
        return Condition(False, "NoUpgrade", f"The first Ray cluster {pending} is being built.")
    per_replica = f"{obs.gpus} GPU{'s' if obs.gpus != 1 else ''} per replica"
    return Condition(
        True,
        "NewCluster",
        f"A second Ray cluster {pending} is starting beside {active} (spec.upgrade.strategy NewCluster): "
        f"the GPUs are held twice ({per_replica} in each cluster) until it serves and traffic moves; "
        "without spare GPUs it never finishes (spec.upgrade.strategy InPlace trades that for downtime).",
    )


# --- the status written ---------------------------------------------------------------------------


def _merge_condition(
    previous: Sequence[Obj], type_: str, value: Condition, generation: int | None, now: str
) -> models.Condition:
    status: Literal["True", "False"] = "True" if value.holds else "False"
    old = _condition(previous, type_)
    # A condition's clock only restarts when its status flips, not when its reason or message moves.
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    return models.Condition(
        type=type_,
        status=status,
        reason=value.reason,
        message=value.message[:MESSAGE_MAX],
        last_transition_time=str(since) if since else now,
        observed_generation=generation,
    )


def compute_status(obs: Observation, previous: Obj | None, now: str) -> models.ModelDeploymentStatus:
    """The status for an observation; `previous` is the current `.status` (for transition times)."""
    found = verdict(obs)
    old_conditions = (previous or {}).get("conditions") or []
    ready = found.ready
    if obs.cache_note and ready.holds:
        # On Ready, so the phase-transition Event (to ScaledToZero, say) carries it too.
        ready = Condition(True, ready.reason, f"{ready.message} {obs.cache_note}")
    values = {
        "Ready": ready,
        "Progressing": found.progressing,
        "Degraded": found.degraded,
        "UpgradePending": upgrade_pending(obs),
    }
    return models.ModelDeploymentStatus(
        phase=found.phase,
        conditions=[
            _merge_condition(old_conditions, t, values[t], obs.generation, now) for t in CONDITION_TYPES
        ],
        observed_generation=obs.generation,
        replicas=models.ReplicaStatus(desired=found.replicas.desired, ready=found.replicas.ready),
        endpoint=obs.endpoint if found.publish_endpoint else None,
        # The gateway's per-model wait for a replica to start: read from status with the endpoint.
        wake_timeout_seconds=obs.wake_timeout_seconds if found.publish_endpoint else None,
    )


def status_dict(status: models.ModelDeploymentStatus) -> dict[str, Any]:
    """The status as `.status` holds it: camelCase, unset optionals left out."""
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def status_changed(old: Obj | None, new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change anything (so an unchanged status costs no write)."""
    old = old or {}
    return any(old.get(key) != new.get(key) for key in {*old.keys(), *new.keys()})
