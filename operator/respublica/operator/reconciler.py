"""The reconciler: one reconcile of one ModelDeployment: render, put the children in place, read them
back, write status.

Level-triggered: whatever happened before (a restart, a hand edit, a lost event), one call brings
the children to what the spec says and reports what they say. Each child is created when missing,
patched only when `drift.compare` finds an owned field that differs, and left alone otherwise, so a
reconcile of an unchanged deployment writes nothing at all (the status is written only when it
changes).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from respublica.api.kube_client import ApiError
from respublica.api.load import describe_in_one_line
from respublica.api.models import ModelDeployment
from respublica.operator import drift, events
from respublica.operator.in_place_upgrade import upgrade_in_place
from respublica.operator.kube import Kube
from respublica.operator.raycluster_bounds import carry_bounds
from respublica.operator.render import (
    CHILD_KINDS,
    DOWNLOAD_JOB,
    MODEL_LABEL,
    RAYSERVICE,
    RenderError,
    ResourceKind,
    rayservice_name,
)
from respublica.operator.render.default_cache import Live, live_facts, uncached_at_zero
from respublica.operator.status import Observation, compute_status, status_changed, status_dict

Obj = dict[str, Any]
Logger = logging.Logger | logging.LoggerAdapter[Any]


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy of a (possibly read-only, kopf-wrapped) object."""
    if isinstance(value, Mapping):
        return {str(k): thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def parse(body: Mapping[str, Any]) -> ModelDeployment:
    """The typed ModelDeployment behind a raw object (ValidationError if the spec is invalid)."""
    return ModelDeployment.model_validate(
        {
            "apiVersion": body.get("apiVersion", "respublica.dev/v1alpha1"),
            "kind": body.get("kind", "ModelDeployment"),
            "metadata": thaw(body.get("metadata") or {}),
            "spec": thaw(body.get("spec") or {}),
        }
    )


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch of `.status` that also removes the keys `new` no longer has (e.g. endpoint)."""
    patch: dict[str, Any] = dict(new)
    for key in old or {}:
        if key not in new:
            patch[key] = None
    return {"status": patch}


@dataclass
class ChildResult:
    live: Obj | None
    action: str  # "created", "patched", "recreated", "unchanged", "skipped", "refused"
    error: str | None = None


@dataclass
class Reconciler:
    """Reconciles ModelDeployments through one API client; keeps only caches, never the truth."""

    kube: Kube
    # render(md, live): `live` is what the model's RayService says (render/default_cache.py).
    render: Callable[[ModelDeployment, Live], list[dict[str, Any]]]
    endpoint: Callable[[ModelDeployment], str]
    kuberay_cache_seconds: float = 30.0
    clock: Callable[[], datetime.datetime] = field(default=lambda: datetime.datetime.now(tz=datetime.UTC))
    _kuberay_seen: float | None = None
    _written: dict[str, dict[str, Any]] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # owner uid -> kinds of children the watches have shown for it (what the prune must look at
    # beyond the kinds the spec renders now, e.g. the cache's PVC and Job after `spec.cache` went).
    _child_kinds: dict[str, set[str]] = field(default_factory=dict)

    def saw_child(self, owner: str, kind: str) -> None:
        """A watch event showed a child of this kind owned by this ModelDeployment."""
        self._child_kinds.setdefault(owner, set()).add(kind)

    def lock(self, uid: str) -> asyncio.Lock:
        """One reconcile at a time per ModelDeployment (handlers and child events share it)."""
        return self._locks.setdefault(uid, asyncio.Lock())

    def forget(self, uid: str) -> None:
        self._written.pop(uid, None)
        self._locks.pop(uid, None)
        self._child_kinds.pop(uid, None)

    async def kuberay_installed(self) -> bool:
        # A positive answer is cached briefly; a negative one is asked again on every reconcile so
        # that installing KubeRay is noticed at the next retry.
        now = time.monotonic()
        if self._kuberay_seen is not None and now - self._kuberay_seen < self.kuberay_cache_seconds:
            return True
        if await self.kube.has_resource(RAYSERVICE):
            self._kuberay_seen = now
            return True
        self._kuberay_seen = None
        return False

    async def apply_child(
        self, want: Mapping[str, Any], logger: Logger, listed: Mapping[str, Obj] | None = None
    ) -> ChildResult:
        """Create, patch or recreate one child. `listed`: its kind's children by name, as a LIST
        by the model label just returned them (no GET then; one missing there is created, and a
        409 falls back to a GET, e.g. for a child whose label was edited away)."""
        kind = str(want["kind"])
        meta = want["metadata"]
        ns, name = meta.get("namespace"), meta["name"]
        live = listed.get(name) if listed is not None else await self.kube.get(kind, ns, name)
        if live is None:
            try:
                created = await self.kube.create(want)
            except ApiError as exc:
                if exc.status == 409:  # created meanwhile (a restart mid-reconcile): compare instead
                    live = await self.kube.get(kind, ns, name)
                    if live is None:
                        raise
                elif exc.temporary:
                    raise
                else:
                    return ChildResult(None, "refused", f"the API refused {kind} {name}: {exc.message}")
            else:
                return ChildResult(created, "created")  # logged by the caller, one line for all
        found = drift.compare(live, want)
        if found.in_sync:
            return ChildResult(live, "unchanged")
        try:
            if found.recreate:
                logger.info(
                    f"Recreating {kind} {ns}/{name}: {', '.join(found.fields)} cannot change in place."
                )
                await self.kube.delete(kind, ns, name)
                return ChildResult(await self.kube.create(want), "recreated")
            assert found.patch is not None
            logger.info(f"Patching {kind} {ns}/{name}: {', '.join(found.fields)} drifted.")
            patched = await self.kube.patch(kind, ns, name, found.patch)
        except ApiError as exc:
            if exc.temporary:
                raise
            return ChildResult(live, "refused", f"the API refused {kind} {name}: {exc.message}")
        return ChildResult(patched if patched is not None else live, "patched")

    async def _list(self, body: Mapping[str, Any], child: ResourceKind) -> dict[str, Obj]:
        """This deployment's live children of one kind, by name (one LIST by the model label)."""
        meta = body.get("metadata") or {}
        ns, name = str(meta.get("namespace")), str(meta.get("name"))
        items = await self.kube.list(child.kind, ns, f"{MODEL_LABEL}={name}")
        return {str(o["metadata"]["name"]): {**o, "kind": child.kind} for o in items}

    async def _listed(
        self,
        body: Mapping[str, Any],
        children: list[dict[str, Any]],
        kuberay: bool,
        listed: dict[str, dict[str, Obj]],
    ) -> dict[str, dict[str, Obj]]:
        """This deployment's live children by kind, then name: one LIST per kind that the spec
        renders now or that the watches have shown a child of, by the model label; the kinds
        already in `listed` (the RayService, listed before render) are not listed again.

        One LIST per kind, not a GET per child and a LIST per kind that render could produce:
        the same answer serves the comparison and the prune. After a restart a child of another
        kind is still pruned: the watch's first listing shows it (saw_child) and its event kicks
        another reconcile."""
        uid = str((body.get("metadata") or {}).get("uid"))
        kinds = {str(c["kind"]) for c in children} | self._child_kinds.get(uid, set())
        for child in CHILD_KINDS:
            if child.kind not in kinds or child.kind in listed or (child == RAYSERVICE and not kuberay):
                continue
            listed[child.kind] = await self._list(body, child)
        return listed

    async def _prune(
        self,
        body: Mapping[str, Any],
        children: list[dict[str, Any]],
        listed: Mapping[str, Mapping[str, Obj]],
        logger: Logger,
    ) -> None:
        meta = body.get("metadata") or {}
        ns, uid = str(meta.get("namespace")), str(meta.get("uid"))
        for child in CHILD_KINDS:  # in CHILD_KINDS' order
            kind = child.kind
            for obj in drift.stale(list((listed.get(kind) or {}).values()), children, uid):
                logger.info(f"Deleting {kind} {ns}/{obj['metadata']['name']}: the spec no longer needs it.")
                await self.kube.delete(kind, ns, obj["metadata"]["name"])

    async def _pods(self, namespace: str, rayservice: Obj | None, job: Obj | None) -> list[Obj]:
        selectors: list[str] = []
        for key in ("activeServiceStatus", "pendingServiceStatus"):
            cluster = ((rayservice or {}).get("status") or {}).get(key, {}).get("rayClusterName")
            if cluster:
                selectors.append(f"ray.io/cluster={cluster}")
        job_status = (job or {}).get("status") or {}
        if job is not None and not job_status.get("succeeded"):
            selectors.append(f"job-name={job['metadata']['name']}")
        pods: list[Obj] = []
        for selector in selectors:
            pods.extend(await self.kube.list("Pod", namespace, selector))
        return pods

    async def reconcile(self, body: Mapping[str, Any], logger: Logger) -> dict[str, Any] | None:
        """Bring one ModelDeployment's children in line and write its status; the status written."""
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None  # owner references take the children away
        uid = str(meta.get("uid"))
        async with self.lock(uid):
            return await self._reconcile(body, logger)

    async def _reconcile(self, body: Mapping[str, Any], logger: Logger) -> dict[str, Any] | None:
        meta = body.get("metadata") or {}
        ns = str(meta.get("namespace"))
        generation = meta.get("generation")
        try:
            md = parse(body)
        except ValidationError as exc:
            obs = Observation(generation=generation, endpoint=None, spec_error=describe_in_one_line(exc))
            return await self._write_status(body, obs, logger)

        kuberay = await self.kuberay_installed()
        # The RayService first: whether it exists, and with which cache, decides the cache of a
        # model with no spec.cache (render/default_cache.py). Every spec renders one, so this is
        # the LIST the comparison below needs anyway.
        listed: dict[str, dict[str, Obj]] = {}
        if kuberay:
            listed[RAYSERVICE.kind] = await self._list(body, RAYSERVICE)
        live = live_facts(listed.get(RAYSERVICE.kind, {}).get(rayservice_name(md)))
        try:
            children = self.render(md, live)
        except RenderError as exc:
            obs = Observation(generation=generation, endpoint=None, spec_error=str(exc))
            return await self._write_status(body, obs, logger)

        listed = await self._listed(body, children, kuberay, listed)
        rayservice: Obj | None = None
        job: Obj | None = None
        refused: list[str] = []
        created: list[str] = []
        for want in children:
            if want["kind"] == RAYSERVICE.kind and not kuberay:
                continue
            result = await self.apply_child(want, logger, listed.get(str(want["kind"]), {}))
            if result.error:
                refused.append(result.error)
            if result.action == "created":
                created.append(f"{want['kind']} {want['metadata']['name']}")
            if want["kind"] == RAYSERVICE.kind:
                rayservice = result.live
                # KubeRay ignores bound and toleration changes (raycluster_bounds): carry them over.
                await carry_bounds(self.kube, want, rayservice, logger)
                # spec.upgrade.strategy InPlace: KubeRay rebuilds a deleted cluster (in_place_upgrade).
                await upgrade_in_place(self.kube, want, rayservice, logger)
            elif want["kind"] == DOWNLOAD_JOB.kind:
                job = result.live

        if created:
            # One line per reconcile, not one per child: a log line is a measurable share of the
            # CPU when a thousand deployments are created at once.
            logger.info(f"Created in {ns}: {', '.join(created)}.")
        await self._prune(body, children, listed, logger)
        pods = await self._pods(ns, rayservice, job)
        # spec.cache or the operator's default cache (render decided which).
        cached = any(c["kind"] == DOWNLOAD_JOB.kind for c in children)
        obs = Observation(
            generation=generation,
            endpoint=self.endpoint(md),
            min_replicas=md.spec.scaling.min_replicas,
            wake_timeout_seconds=md.spec.scaling.wake_timeout_seconds,
            upgrade_strategy=md.spec.upgrade.strategy,
            gpus=md.spec.resources.gpus,
            gpu_product=md.spec.resources.gpu_product,
            kuberay_missing=not kuberay,
            cache_wanted=cached,
            cache_note=uncached_at_zero(md, cached),
            rayservice=rayservice,
            job=job,
            pods=pods,
            refused=tuple(refused),
        )
        return await self._write_status(body, obs, logger)

    async def _write_status(
        self, body: Mapping[str, Any], obs: Observation, logger: Logger
    ) -> dict[str, Any]:
        meta = body.get("metadata") or {}
        ns, name, uid = meta.get("namespace"), str(meta.get("name")), str(meta.get("uid"))
        # The status this process wrote last is fresher than the one in a queued event's body.
        previous = self._written.get(uid) or thaw(body.get("status") or {})
        status = compute_status(obs, previous, now=self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"))
        new = status_dict(status)
        if not status_changed(previous, new):
            return new
        await self.kube.patch("ModelDeployment", ns, name, status_patch(previous, new), subresource="status")
        self._written[uid] = new
        old_phase, new_phase = previous.get("phase"), new["phase"]
        if old_phase != new_phase:
            conditions = {c.type: c for c in status.conditions}
            ready, degraded = conditions["Ready"], conditions["Degraded"]
            message = degraded.message if degraded.status == "True" else ready.message
            logger.info(f"Phase {old_phase or 'New'} -> {new_phase}: {message}")
            try:
                await events.post_transition(self.kube, body, old_phase, new_phase, message)
            except (ApiError, OSError) as exc:  # an Event is a courtesy; never fail a reconcile on it
                logger.warning(f"Could not post the {new_phase} Event: {exc}")
        return new
